"""The run report of a federation: ``report.html`` with PNGs next to the JSON it is drawn from.

Inputs are plain JSON-able objects (the coordinator's ``metrics.json`` history and run summary), so the
report can be rebuilt from files after the run (``write_report(out, json.load(...), ...)``).

The page is a list of sections, :data:`SECTIONS`: each is a function ``(RunReport) -> str`` returning its
HTML (``""`` when it has nothing to say, e.g. the privacy section of a run without DP). To add a section,
write one function and insert it into the list where it belongs; sections do not know about each other.
Shared HTML helpers live in :mod:`xr0_core.htmlpage`; the downstream-evaluation tables in
:mod:`xr0_core.eval.evaluation_report`.

The summary at the top answers "did pretraining help?": per task, the pretrained backbone minus the
random-init one with a 95 % interval, pooled over hospitals. The statistics (intervals, pooling, verdicts) are
:mod:`xr0_core.eval.summary`, which the model card reads too; this module only draws and writes.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from xr0_core.atomic import atomic_write
from xr0_core.eval.multimodal_report import multimodal_section
from xr0_core.eval.summary import LOWER_IS_BETTER, MIN_UNITS, is_task_key, summary_rows
from xr0_core.htmlpage import details, image, note, page, table
from xr0_core.train.loss_curve import LOSS_CURVE_PREFIX  # per-round summary of the per-step loss (sites send it)


@dataclass
class RunReport:
    """What every section reads: the output folder (PNGs go there), the run summary and the history."""

    out_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def cfg(self) -> dict[str, Any]:
        return self.summary.get("config", {}) or {}

    @property
    def train(self) -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("kind") == "train"]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("kind") == "evaluate"]

    def site_names(self) -> list[str]:
        names = {s["name"] for r in self.history for s in r.get("sites", [])}
        names |= {s["name"] for s in self.summary.get("sites") or []}
        return sorted(names)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _plt().close(fig)
    return path


# ------------------------------------------------------------------------------------------ summary


def plot_forest(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Forest plot: per task, the gain over random init (oriented so right = pretrained better) with its
    95 % interval (pooled: diamond and bar) and each hospital's difference (grey dots). One row per task with
    its own axis, since tasks measure in different units (accuracy, pixels). None without intervals."""
    rows = [r for r in rows if math.isfinite(r["low"])]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.0, 0.62 * len(rows) + 0.9), dpi=100, squeeze=False)
    colours = {"better": "#0a6b2d", "worse": "#a4161a"}
    for ax, r in zip(axes[:, 0], rows):
        sign = -1.0 if r["metric"] in LOWER_IS_BETTER else 1.0
        lo, hi = sorted((sign * r["low"], sign * r["high"]))
        c = colours.get(r["verdict"], "#555555")
        ax.plot([lo, hi], [0, 0], color=c, lw=2.5)
        ax.plot([sign * r["diff"]], [0], "D", color=c, ms=7)
        sites = [sign * s["diff"] for s in r["per_site"]]
        ax.plot(sites, [0.45] * len(sites), "o", color="#999999", ms=3.5)
        ax.axvline(0.0, color="black", lw=0.8, ls="--")
        # A zero-width interval (both backbones right on every row) still gets a readable axis.
        span = max([abs(lo), abs(hi)] + [abs(v) for v in sites] + [0.02])
        ax.set_xlim(min(lo, -0.1 * span, *sites) - 0.1 * span, max(hi, 0.1 * span, *sites) + 0.1 * span)
        ax.set_ylim(-0.6, 0.9)
        ax.set_yticks([])
        ax.set_ylabel(f"{r['family']}/{r['task']}\n{r['metric']}", rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("gain over random init (right = pretrained better); bar: 95 % interval, "
                           "grey: hospitals", fontsize=8)
    fig.tight_layout(h_pad=0.3)
    return _save(fig, path)


def summary_section(rep: RunReport) -> str:
    """Did pretraining help? Verdict table and forest plot (or: nothing to evaluate)."""
    if rep.evals and not any(s["status"] == "ok" for r in rep.evals for s in r["sites"]):
        if all(s["status"] == "empty" for r in rep.evals for s in r["sites"]):
            return ("<h2>Summary: did pretraining help?</h2>"
                    + note("nothing to evaluate: no hospital has labelled held-out images (e.g. eval.tasks = none "
                           "on unlabelled data), so there is no downstream number to compare; training ran normally"))
        return "<h2>Summary: did pretraining help?</h2>" + note("no hospital returned an evaluation (see the per-round table)")
    rows = summary_rows(rep.history)
    if not rows:
        return ""
    badge = {"better": "better", "worse": "worse", "not shown": "unclear", "no interval": "unclear",
             "too few patients": "unclear"}
    def interval(iv: dict[str, Any] | None) -> str:
        if not iv:
            return "-"
        diff = f"{iv['diff']:+.3f}" if math.isfinite(iv["diff"]) else "-"
        return f"{diff} [{iv['low']:+.3f}, {iv['high']:+.3f}]" if math.isfinite(iv["low"]) else diff

    def tag(v: str) -> str:
        return f"<span class='{badge[v]}'>{html.escape(v)}</span>"

    cells, pixel_cells = [], []
    for r in rows:
        cells.append([html.escape(r["family"]), html.escape(r["task"]), html.escape(r["metric"]), r["pretrained"],
                      r["random"], interval(r), tag(r["verdict"]),
                      r["hospitals"], int(r["units"]) if math.isfinite(r["units"]) else ""])
        pix = r.get("vs_pixels")
        if pix:  # a second table: one wide table would hide these columns behind a scroll bar
            pixel_cells.append([html.escape(r["family"]), html.escape(r["task"]), html.escape(r["metric"]),
                                r["pretrained"], r["pixels"] if math.isfinite(r.get("pixels", math.nan)) else "-",
                                interval(pix), tag(pix["verdict"]),
                                int(pix["units"]) if math.isfinite(pix.get("units", math.nan)) else ""])
    out = ["<h2>Summary: did pretraining help?</h2>",
           note(f"frozen backbone after round {rows[0]['round']}: pretrained minus random init (same heads, same "
                "test rows). Interval: 95 %, paired bootstrap over patients at each hospital, pooled across "
                f"hospitals by test units. 'better' / 'worse' only when the whole interval is on one side of 0 and at "
                f"least {MIN_UNITS} patients were scored."),
           table(["family", "task", "metric", "pretrained", "random init", "difference [95 % interval]", "verdict",
                  "sites", "units"], cells, raw=True, text_columns=3)]
    png = plot_forest(rows, rep.out_dir / "summary_forest.png")
    if png is not None:
        out.append(image(png.name, "forest plot: gain over random init per task with 95 % intervals"))
    if pixel_cells:
        out += ["<h3>Against raw pixels</h3>",
                note("the same resized image, flattened, with the same head (classification and image-image "
                     "retrieval): a backbone below it is worse than no backbone for that task. Same interval and "
                     "verdict rules as above."),
                table(["family", "task", "metric", "pretrained", "raw pixels", "difference [95 % interval]",
                       "verdict", "units"], pixel_cells, raw=True, text_columns=3)]
    return "\n".join(out)


def run_line_section(rep: RunReport) -> str:
    """One line under the title: preset, rounds, steps, seed, run key, privacy and aggregation mode."""
    cfg, s = rep.cfg, rep.summary
    mode = []
    if cfg.get("privacy.enabled"):
        mode.append("sample-level DP")
    if cfg.get("privacy.client-level"):
        mode.append("client-level DP")
    if cfg.get("secagg.enabled"):
        mode.append("secure aggregation")
    stopped = ""
    if s.get("status") == "stopped":
        stopped = (f"<p class='worse'>run stopped: {html.escape(str(s.get('stop_reason', '')))}; no model was "
                   "exported</p>")
    return stopped + note(f"preset {cfg.get('preset', '?')}, rounds completed {s.get('rounds_completed', '?')} of "
                f"{cfg.get('federation.rounds', '?')}, local steps {cfg.get('train.local-steps', '?')}, seed "
                f"{cfg.get('seed', '?')}, {', '.join(mode) or 'no DP, plain aggregation'}, run {s.get('run_key', '')}")


# ---------------------------------------------------------------------------------------- hospitals


# Above this many hospitals a per-hospital table is folded behind an aggregated one (issue 27: a report of
# 1,000 simulated hospitals must stay readable).
MANY_SITES = 30


def fold_rows(title: str, headers: list[str], rows: list[list[Any]], **kw: Any) -> str:
    """``table(headers, rows)``, folded (``details``, ``title`` with the row count) when it has more than
    :data:`MANY_SITES` rows."""
    body = table(headers, rows, **kw)
    return body if len(rows) <= MANY_SITES else details(f"{title} ({len(rows)} rows)", body)


def _spread(values: list[float]) -> str:
    """``min / median / max`` of numbers, for the aggregated tables."""
    import statistics

    if not values:
        return ""
    fmt = (lambda v: f"{v:.0f}") if all(float(v).is_integer() for v in values) else (lambda v: f"{v:.3g}")
    return f"{fmt(min(values))} / {fmt(statistics.median(values))} / {fmt(max(values))}"


def hospitals_section(rep: RunReport) -> str:
    """Images per hospital and anatomy (columns that are empty everywhere are left out); above
    :data:`MANY_SITES` hospitals the table per anatomy across hospitals comes first and the per-hospital one
    is folded."""
    sites = rep.summary.get("sites") or []
    if not sites:
        return ""
    anatomies = sorted({a for s in sites for a in s.get("by_anatomy", {})})
    rows = [[s["name"], s.get("images", "")] + [s.get("by_anatomy", {}).get(a, 0) for a in anatomies]
            + [s.get("scanner", "")] for s in sites]
    per_site = table(["hospital", "images"] + anatomies + ["scanner"], rows)
    if len(sites) <= MANY_SITES:
        return "<h2>Hospitals</h2>" + per_site
    images = [float(s["images"]) for s in sites if isinstance(s.get("images"), (int, float))]
    agg = [["all anatomies", len(sites), int(sum(images)), _spread(images)]]
    for a in anatomies:
        counts = [float(s.get("by_anatomy", {}).get(a, 0)) for s in sites]
        held = [c for c in counts if c > 0]
        agg.append([a, len(held), int(sum(counts)), _spread(held)])
    return ("<h2>Hospitals</h2>"
            + note(f"{len(sites)} hospitals; per anatomy: the hospitals that hold it and their images "
                   "(min / median / max over those hospitals)")
            + table(["anatomy", "hospitals", "images", "images per hospital (min / median / max)"], agg)
            + details(f"every hospital ({len(sites)})", per_site))


# ----------------------------------------------------------------------------------------- training


def loss_points(rep: RunReport, name: str) -> tuple[list[float], list[float], bool]:
    """(global steps, losses, per_step) of one hospital: the per-step summary when sites sent it
    (``loss-curve-*``), else one point per round at the round's last step."""
    from xr0_core.train.loss_curve import loss_curve_steps

    local = int(rep.cfg.get("train.local-steps", 1) or 1)
    xs: list[float] = []
    ys: list[float] = []
    per_step = False
    for r in rep.train:
        for s in r["sites"]:
            if s["name"] != name or s["status"] != "ok":
                continue
            curve = sorted(k for k in s["metrics"] if k.startswith(LOSS_CURVE_PREFIX))
            start = (r["round"] - 1) * local
            if curve:
                per_step = True
                centres = loss_curve_steps(local)[:len(curve)]
                xs += [start + c for c in centres]
                ys += [s["metrics"][k] for k in curve]
            elif "loss" in s["metrics"]:
                xs.append(start + local - 1)
                ys.append(s["metrics"]["loss"])
    return xs, ys, per_step


def plot_curves(rep: RunReport, path: Path) -> tuple[Path | None, bool]:
    """Local SSL loss per hospital over global steps (PNG); (None, False) when no hospital sent a loss."""
    lines = {n: loss_points(rep, n) for n in rep.site_names()}
    lines = {n: v for n, v in lines.items() if v[0]}
    if not lines:
        return None, False
    plt = _plt()
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.0, 3.6), dpi=100)
    per_step = any(v[2] for v in lines.values())
    many = len(lines) > MANY_SITES
    for name, (xs, ys, _) in sorted(lines.items()):
        if many:  # every hospital faint, the median across hospitals bold (below)
            ax.plot(xs, ys, "-", marker=".", ms=2.5, lw=0.5, alpha=0.25, color="#777777")  # 1-point hospitals too
        else:
            ax.plot(xs, ys, "-", marker="." if len(xs) < 40 else None, lw=1.2, alpha=0.85, label=name)
    if many:
        import statistics

        at: dict[float, list[float]] = {}
        for xs, ys, _ in lines.values():
            for x, y in zip(xs, ys):
                at.setdefault(x, []).append(y)
        steps = sorted(at)
        ax.plot(steps, [statistics.median(at[x]) for x in steps], "-", color="#c0392b", lw=2.0,
                label=f"median of {len(lines)} hospitals")
    local = int(rep.cfg.get("train.local-steps", 1) or 1)
    for r in rep.train[:-1]:
        ax.axvline(r["round"] * local - 0.5, color="#bbbbbb", lw=0.6, ls=":")
    ax.set_xlabel("global step (dotted: round boundaries)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("local SSL loss")
    ax.set_title("local SSL loss per hospital" + ("" if per_step else " (per round)"), fontsize=10)
    ax.grid(alpha=0.3)
    if len(lines) <= 12 or many:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path), per_step


def training_section(rep: RunReport) -> str:
    """Per-step loss curves per hospital (each site sends a few per-round scalars summarising its steps)."""
    if not rep.train:
        return ""
    png, per_step = plot_curves(rep, rep.out_dir / "curve_loss.png")
    out = ["<h2>Training</h2>"]
    if png is None:
        if any("epsilon" in s["metrics"] for r in rep.train for s in r["sites"]):
            out.append(note("no loss curve: under DP the losses are computed from private data without noise, so "
                            "they stay in each hospital's log (docs/privacy.md)"))
        else:
            out.append(note("no hospital reported a loss"))
        return "\n".join(out)
    out.append(image(png.name, "local SSL loss per hospital over global steps"))
    if per_step:
        out.append(note("each point is the mean loss of a slice of a round's local steps (up to 8 per round), "
                        "computed at the hospital; per-step values stay there"))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ privacy


def plot_epsilon(rep: RunReport, path: Path) -> Path | None:
    """ε after every round per hospital, with each hospital's budget dashed."""
    names = rep.site_names()
    series = {n: [(r["round"], s["metrics"]["epsilon"], s["metrics"].get("privacy-budget"))
                  for r in rep.train for s in r["sites"] if s["name"] == n and "epsilon" in s["metrics"]]
              for n in names}
    series = {n: v for n, v in series.items() if v}
    if not series:
        return None
    plt = _plt()
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.0, 3.2), dpi=100)
    for i, (name, pts) in enumerate(sorted(series.items())):
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=4, label=name)
        budget = pts[-1][2]
        if budget is not None and i < 12:
            ax.axhline(budget, color=line.get_color(), ls="--", lw=0.8, alpha=0.7)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("ε spent (dashed: budget)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if len(series) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def privacy_section(rep: RunReport) -> str:
    """ε of every hospital after every train round (the ``epsilon`` metric each DP site reports from its
    ledger), the budget left, and the hospitals that refused with their reason; "" without DP."""
    train = rep.train
    if not any("epsilon" in s["metrics"] for r in train for s in r["sites"]):
        return ""
    names = sorted({s["name"] for r in train for s in r["sites"]})
    rows = []
    for r in train:
        by = {s["name"]: s for s in r["sites"]}
        rows.append([r["round"]] + [(f"{by[n]['metrics']['epsilon']:.3f}" if n in by and "epsilon" in by[n]["metrics"]
                                     else (by[n]["status"] if n in by else "")) for n in names])
    last: dict[str, dict[str, float]] = {}
    for r in train:
        for s in r["sites"]:
            if "epsilon" in s["metrics"]:
                last[s["name"]] = s["metrics"]
    summary = []
    for n in names:
        if n not in last:
            continue
        m = last[n]
        budget = m.get("privacy-budget")
        left = budget - m["epsilon"] if budget is not None else ""
        summary.append([n, m.get("epsilon-run", ""), m.get("privacy-run-cap", ""), m["epsilon"], budget, left,
                        m.get("privacy-delta", ""), m.get("noise-multiplier", ""), m.get("sample-rate", ""),
                        m.get("dp-steps", "")])
    refused = [[r["round"], s["name"], s.get("reason", "")] for r in train for s in r["sites"] if s["status"] != "ok"]
    unit = "client-level" if rep.cfg.get("privacy.client-level") and not rep.cfg.get("privacy.enabled") else \
        "patient-level (image-level without patient ids)"
    out = ["<h2>Privacy</h2>",
           note(f"{unit} ε at each hospital's δ, accumulated over every round of every run it took part in, as "
                "recorded in its own privacy ledger before its weights left (docs/privacy.md)"),
           note("ε this run: what the hospital spent in this run (resumes included), against its per-run cap (the "
                "lifetime budget where its policy sets run-cap = all); ε spent and budget left count every run"),
           ]
    headers = ["hospital", "ε this run", "run cap", "ε spent (all runs)", "budget", "budget left", "δ",
               "noise multiplier", "sample rate", "DP steps (last round)"]
    if len(names) > MANY_SITES:  # per round across hospitals first; a column per hospital would not read
        spent = [[r["round"], sum("epsilon" in s["metrics"] for s in r["sites"]),
                  _spread([s["metrics"]["epsilon"] for s in r["sites"] if "epsilon" in s["metrics"]])]
                 for r in train]
        out.append(table(["round", "hospitals charged", "ε spent (min / median / max)"], spent))
        out.append(fold_rows("ε per hospital", headers, summary))
    else:
        out.append(table(headers, summary))
    png = plot_epsilon(rep, rep.out_dir / "privacy_epsilon.png")
    if png is not None:
        out.append(image(png.name, "epsilon per hospital per round"))
    if len(names) > MANY_SITES:  # one row per hospital and round (a column per hospital would be 1,000 wide)
        long = [[r["round"], s["name"], f"{s['metrics']['epsilon']:.3f}" if "epsilon" in s["metrics"] else s["status"]]
                for r in train for s in sorted(r["sites"], key=lambda s: s["name"])]
        out.append(details(f"ε per hospital after each round ({len(long)} rows)",
                           table(["round", "hospital", "ε"], long)))
    else:
        out.append(details("ε per hospital after each round", table(["round"] + names, rows)))
    if refused:
        out.append(note("hospitals that did not train, with their reason"))
        out.append(fold_rows("hospitals that did not train", ["round", "hospital", "reason"], refused))
    return "\n".join(out)


def audit_section(rep: RunReport) -> str:
    """The privacy audit each hospital ran on the global weights (``eval.audit``; only its scalars left the
    hospital): ε from its ledger (an upper bound) next to the empirical lower bounds, and per membership score
    AUROC and TPR at 0.1 % / 1 % FPR with 95 % intervals; the released operating points on log axes. "" when
    no hospital released audit scalars."""
    from xr0_core.audit.summary import audit_rows, ci, fmt

    rows = audit_rows(rep.history)
    if not rows:
        return ""
    top, detail, points = [], [], {}
    for r in rows:
        if r["skipped"]:
            top.append([r["site"], fmt(r["epsilon_ledger"]), "skipped (no held-out patients)", "", "", ""])
            continue
        best = max(r["scores"].items(), key=lambda kv: kv[1]["auroc"], default=(None, None))
        top.append([r["site"], fmt(r["epsilon_ledger"]) or "no DP", fmt(r["epsilon_lower"]), fmt(r["epsilon_canary"]),
                    best[0] or "", ci(best[1]["auroc"], *best[1]["auroc_ci"]) if best[1] else ""])
        for name, sc in r["scores"].items():
            t = sc["tpr"]
            detail.append([r["site"], name, ci(sc["auroc"], *sc["auroc_ci"]),
                           ci(*t[0.001], 3) if 0.001 in t else "", ci(*t[0.01], 3) if 0.01 in t else "",
                           fmt(sc["epsilon_lower"])])
            points[f"{r['site']} {name}"] = [(f, v[0]) for f, v in sorted(t.items())]
    out = ["<h2>Privacy audit</h2>",
           note("each hospital audited the global weights on its own patients (members: its training patients; "
                "non-members: patients it held out or canaries it left out), per patient. ε from the ledger is the "
                "guarantee (an upper bound); the audit gives 95 % lower bounds, which sit below it when the "
                "accounting is right (docs/privacy.md, \"Measuring what an attacker learns\")"),
           table(["hospital", "ε (ledger)", "ε lower bound (membership)", "ε lower bound (canaries)",
                  "best score", "its AUROC (95 % CI)"], top)]
    if points:
        from xr0_core.audit.plot import write_roc_png

        png = write_roc_png({}, rep.out_dir / "audit_roc.png", points=points,
                            title="released operating points (TPR at 0.1 %, 1 %, 10 % FPR)")
        out.append(image(png.name, "membership inference operating points on log axes"))
        out.append(details("per score", table(["hospital", "score", "AUROC (95 % CI)", "TPR @ 0.1 % FPR",
                                               "TPR @ 1 % FPR", "ε lower bound"], detail)))
    return "\n".join(out)


# ------------------------------------------------------------------------------ secure aggregation

SECAGG_COLUMNS = (("secagg-uploads", "masked uploads"), ("secagg-dropped", "dropped"),
                  ("secagg-threshold", "threshold"), ("secagg-clipped", "clipped coordinates"),
                  ("secagg-weight-capped", "weights capped"), ("secagg-error-bound", "error bound"),
                  ("secagg-skipped", "round skipped"))


def secagg_section(rep: RunReport) -> str:
    """Per round: masked uploads, dropouts (and why), clipping counts and the bound on the quantisation
    error of the unmasked mean; "" when secure aggregation was off."""
    rounds = [r for r in rep.train if any(k.startswith("secagg-") for k in r["metrics"])]
    if not rounds and not rep.cfg.get("secagg.enabled"):
        return ""
    rows = [[r["round"]] + [r["metrics"].get(k, "") for k, _ in SECAGG_COLUMNS] for r in rounds]
    drops = [[r["round"], s["name"], s["status"], s.get("reason", "")] for r in rounds for s in r["sites"]
             if s["status"] != "ok"]
    cfg = rep.cfg
    out = ["<h2>Secure aggregation</h2>",
           note("the coordinator saw only the sum of masked updates (SecAgg+, docs/secure-aggregation.md). "
                f"Update coordinates are clipped to ±{cfg.get('secagg.quant-range', '?')} and quantised to "
                f"{cfg.get('secagg.quant-bits', '?')} bits; clipped coordinates are counted, never silent. "
                "Error bound: the decoded mean is within this distance (per coordinate) of the exact "
                "example-weighted mean of the clipped updates."),
           table(["round"] + [label for _, label in SECAGG_COLUMNS], rows)]
    if drops:
        out.append(note("hospitals whose update did not count, with the stage and reason"))
        out.append(fold_rows("hospitals whose update did not count", ["round", "hospital", "status", "reason"], drops))
    elif rounds:
        out.append(note("no hospital dropped out"))
    notes = [[r["round"], "skipped" if not r.get("updated", True) else "warning", text]
             for r in rep.train for text in ([r["reason"]] if r.get("reason") else [])
             + ([charged_note(r)] if charged_note(r) else []) + list(r.get("warnings", []))]
    if notes:
        out.append(note("rounds the coordinator skipped (global weights unchanged) and settings that cost accuracy"))
        out.append(table(["round", "kind", "what happened"], notes))
    return "\n".join(out)


# ------------------------------------------------------------------------------- evaluation, rounds


def evaluation_section(rep: RunReport) -> str:
    """Downstream tasks per hospital (pretrained / random), and the pooled comparison of --compare-pooled."""
    out = []
    comp = rep.summary.get("comparison")
    if rep.evals and any(s["status"] == "ok" for r in rep.evals for s in r["sites"]):
        from xr0_core.eval.evaluation_report import federated_section

        out.append(federated_section(rep.out_dir, rep.history))
    if comp:
        names = sorted({k for row in comp for k in row if k != "backbone"})
        out.append("<h3>Federated vs pooled vs random init</h3>")
        out.append(note("anatomy k-NN / linear probe on held-out images of all hospitals (--compare-pooled)"))
        out.append(table(["backbone"] + names, [[row["backbone"]] + [row.get(n, "") for n in names] for row in comp]))
    if not any(out):
        return ""
    return "<h2>Evaluation (frozen backbone)</h2>" + "\n".join(out)


def _round_rows(history: list[dict[str, Any]], metric_names: list[str]) -> list[list[Any]]:
    rows = []
    for r in history:
        for s in sorted(r["sites"], key=lambda s: s["name"]):
            rows.append([r["round"], r["kind"], s["name"], _node_id(s), s["status"], s.get("reason", "")]
                        + [s["metrics"].get(m, "") for m in metric_names])
    return rows


def _node_id(site: dict[str, Any]) -> str:
    """The Flower node id beside a hospital's name, when the name is not made from it (it changes when a
    hospital re-keys; the name does not)."""
    node = site.get("node_id")
    return "" if node is None or site.get("name") == f"node-{node}" else str(node)


def _table_metric(key: str) -> bool:
    """Keys worth a column in the per-round table (task keys have their own section)."""
    return not (key == "partition-id" or key.startswith(LOSS_CURVE_PREFIX) or is_task_key(key))


def charged_note(r: dict[str, Any]) -> str:
    """For a train round that did not move the global model: how many hospitals still paid epsilon for it
    (their ledgers committed the release before the coordinator found the round unusable); "" otherwise."""
    if r.get("kind") != "train" or r.get("updated", True):
        return ""
    paid = [s["name"] for s in r["sites"] if s["status"] == "ok" and "epsilon" in s["metrics"]]
    shown = ", ".join(sorted(paid)[:10]) + (f" and {len(paid) - 10} more" if len(paid) > 10 else "")
    return f"ε was charged at {len(paid)} hospital(s) for this round: {shown}" if paid else ""


def _round_note(r: dict[str, Any]) -> str:
    """Why a round did not move the global model, and its warnings (``RoundOutcome.reason`` / ``warnings``)."""
    parts = [f"skipped: {r['reason']}" if not r.get("updated", True) else r["reason"]] if r.get("reason") else []
    charged = charged_note(r)
    return "; ".join(parts + ([charged] if charged else []) + list(r.get("warnings", [])))


def rounds_section(rep: RunReport) -> str:
    """Per round, per hospital: status, reason, scalar metrics (folded: it is long)."""
    if not rep.history:
        return ""
    names = sorted({k for r in rep.history for s in r["sites"] for k in s["metrics"] if _table_metric(k)})
    agg = sorted({k for r in rep.history for k in r["metrics"] if _table_metric(k)})
    return ("<h2>Per round</h2>"
            + table(["round", "kind", "hospitals ok", "seconds", "note"] + agg,
                    [[r["round"], r["kind"], f"{sum(s['status'] == 'ok' for s in r['sites'])}/{len(r['sites'])}",
                      r.get("seconds", ""), _round_note(r)] + [r["metrics"].get(k, "") for k in agg]
                     for r in rep.history])
            + details("per hospital", table(["round", "kind", "hospital", "node", "status", "reason"] + names,
                                            _round_rows(rep.history, names))))


def config_section(rep: RunReport) -> str:
    """The full flat configuration, folded."""
    return "<h2>Configuration</h2>" + details(
        f"{len(rep.cfg)} keys (config hash in checkpoints/)",
        "<pre>" + html.escape(json.dumps(rep.cfg, indent=1, sort_keys=True)) + "</pre>")


HEALTH_COLUMNS = ("rankme-cls", "rankme-patch", "feature-std", "teacher-entropy", "student-entropy",
                  "prototype-usage", "center-norm", "knn-probe", "feature-change")


def health_section(rep: RunReport) -> str:
    """SSL health verdict and the last measurement of every hospital (:func:`xr0_core.train.health.assess_history`);
    "" when no hospital measured any (e.g. under DP)."""
    from xr0_core.train.health_verdict import assess_history

    verdict = assess_history(rep.history)
    if not verdict["sites"]:
        return ""
    rows = [[name, v["status"], *[f"{v['last'][k]:.3g}" if k in v["last"] else "" for k in HEALTH_COLUMNS],
             "; ".join(v["reasons"])] for name, v in verdict["sites"].items()]
    headers = ["hospital", "status", *HEALTH_COLUMNS, "reasons"]
    head = (f"<h2>SSL health: {html.escape(verdict['status'])}</h2>"
            + note("last measurement per hospital on its fixed probe images (xr0_core/train/health.py): RankMe "
                   "near 1 or feature std near 0 = collapsed"))
    if len(rows) <= MANY_SITES:
        return head + table(headers, rows, keep_empty=True, text_columns=2)
    # Many hospitals: how many are in each state, the measurements across hospitals, the ones not ok in full.
    states: dict[str, int] = {}
    for v in verdict["sites"].values():
        states[v["status"]] = states.get(v["status"], 0) + 1
    spread = [[k, _spread([v["last"][k] for v in verdict["sites"].values() if k in v["last"]])]
              for k in HEALTH_COLUMNS]
    flagged = [r for r in rows if r[1] != "ok"]
    return (head + table(["status", "hospitals"], sorted(states.items()))
            + table(["measurement", "min / median / max over hospitals"], spread)
            + (note(f"{len(flagged)} hospitals not ok") + fold_rows("hospitals not ok", headers, flagged,
                                                                      keep_empty=True, text_columns=2)
               if flagged else "")
            + details(f"every hospital ({len(rows)})", table(headers, rows, keep_empty=True, text_columns=2)))


Section = Callable[[RunReport], str]
# The page, top to bottom. Each entry: (id, function). Add a section by inserting one entry.
SECTIONS: list[tuple[str, Section]] = [
    ("run", run_line_section),
    ("summary", summary_section),
    ("hospitals", hospitals_section),
    ("training", training_section),
    ("ssl-health", health_section),
    ("privacy", privacy_section),
    ("privacy-audit", audit_section),
    ("multimodal", lambda rep: multimodal_section(rep.summary, rep.history)),  # mXR-0 ("" when image-only)
    ("secure-aggregation", secagg_section),
    ("evaluation", evaluation_section),
    ("rounds", rounds_section),
    ("configuration", config_section),
]


def render(rep: RunReport, sections: list[tuple[str, Section]] | None = None) -> str:
    """The whole HTML page from ``sections`` (default :data:`SECTIONS`); each section's HTML is wrapped in a
    ``<section id=...>``; empty sections are left out."""
    parts = []
    for sid, fn in (SECTIONS if sections is None else sections):
        body = fn(rep)
        if body:
            parts.append(f"<section id='{sid}'>{body}</section>")
    return page("XR-0 federated pretraining", parts)


def write_report(out_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    """Write ``report.html`` (+ PNGs) and the model card into ``out_dir``.

    Parameters
    ----------
    out_dir : Path
    summary : dict
        Run summary; optional keys used when present: ``sites`` (list of {"name", "images",
        "by_anatomy", "scanner"...}), ``comparison`` (list of {"backbone", metric: value}), ``config``.
    history : list of dict
        ``metrics.json["rounds"]``: one entry per train / evaluate round with per-site outcomes.
    """
    out_dir = Path(out_dir)
    rep = RunReport(out_dir, summary, history)
    text = render(rep)
    path = out_dir / "report.html"
    atomic_write(path, lambda p: p.write_text(text))
    from xr0_core.model_card import write_model_card

    write_model_card(out_dir, summary, history)  # rebuilt with every report, so it never lags behind
    return path


def rewrite_outputs(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Rewrite ``run.json`` and ``report.html`` from ``summary`` and the history in ``metrics.json``."""
    from xr0_core.atomic import atomic_write_json

    out_dir = Path(out_dir)
    metrics = out_dir / "metrics.json"
    history = json.loads(metrics.read_text())["rounds"] if metrics.exists() else []
    atomic_write_json(out_dir / "run.json", summary)
    return write_report(out_dir, summary, history)
