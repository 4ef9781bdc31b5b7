"""The run report: ``report.html`` with PNG curves next to the JSON it is drawn from.

Inputs are plain JSON-able objects (the coordinator's ``metrics.json`` history and run summary), so the
report can be rebuilt from files after the run (``write_report(out, json.load(...), ...)``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterable

from xr0_core.atomic import atomic_write
from xr0_core.eval.multimodal_report import multimodal_section

EVAL_FAMILIES = ("classification/", "retrieval/", "segmentation/", "landmarks/", "grounding/", "report_generation/",
                 "zeroshot/")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plot_curves(history: list[dict[str, Any]], path: Path, metric: str = "loss") -> Path | None:
    """Aggregate and per-site ``metric`` over train rounds as a PNG; None when nothing to plot."""
    train = [r for r in history if r["kind"] == "train"]
    if not any(metric in r["metrics"] for r in train):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    xs = [r["round"] for r in train if metric in r["metrics"]]
    ax.plot(xs, [r["metrics"][metric] for r in train if metric in r["metrics"]], "k-o", lw=2, label="weighted mean")
    names = sorted({s["name"] for r in train for s in r["sites"]})
    for name in names:
        pts = [(r["round"], s["metrics"][metric]) for r in train for s in r["sites"]
               if s["name"] == name and s["status"] == "ok" and metric in s["metrics"]]
        if pts:
            ax.plot(*zip(*pts), "--", marker=".", alpha=0.7, label=name)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"local SSL {metric} per round")
    ax.grid(alpha=0.3)
    if len(names) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _round_rows(history: list[dict[str, Any]], metric_names: list[str]) -> list[list[Any]]:
    rows = []
    for r in history:
        for s in sorted(r["sites"], key=lambda s: s["name"]):
            rows.append([r["round"], r["kind"], s["name"], s["status"], s.get("reason", "")]
                        + [s["metrics"].get(m, "") for m in metric_names])
    return rows


def privacy_section(history: list[dict[str, Any]]) -> str:
    """Epsilon of every hospital after every train round (from the ``epsilon`` metric each DP site reports),
    and the hospitals that refused, with their reason. Empty when no site reported epsilon."""
    train = [r for r in history if r["kind"] == "train"]
    if not any("epsilon" in s["metrics"] for r in train for s in r["sites"]):
        return ""
    names = sorted({s["name"] for r in train for s in r["sites"]})
    rows = []
    for r in train:
        by = {s["name"]: s for s in r["sites"]}
        rows.append([r["round"]] + [(f"{by[n]['metrics']['epsilon']:.3f}" if n in by and "epsilon" in by[n]["metrics"]
                                     else (by[n]["status"] if n in by else "")) for n in names])
    last = {}
    for r in train:
        for s in r["sites"]:
            if "epsilon" in s["metrics"]:
                last[s["name"]] = s["metrics"]
    summary = [[n, last[n]["epsilon"], last[n].get("privacy-budget", ""), last[n].get("privacy-delta", ""),
                last[n].get("noise-multiplier", "")] for n in names if n in last]
    refused = [[r["round"], s["name"], s.get("reason", "")] for r in train for s in r["sites"] if s["status"] != "ok"]
    out = ["<h2>Privacy (epsilon per hospital)</h2>",
           "<p class='note'>patient-level (image-level without patient ids) epsilon at each hospital's delta, "
           "accumulated over every round of every run it took part in (docs/privacy.md)</p>",
           _table(["round"] + names, rows),
           _table(["hospital", "epsilon", "budget", "delta", "noise multiplier"], summary)]
    if refused:
        out.append("<p class='note'>hospitals that did not train</p>")
        out.append(_table(["round", "hospital", "reason"], refused))
    return "\n".join(out)


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} h2{margin-top:1.6em} .note{color:#555;font-size:13px}
"""


def write_report(out_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    """Write ``report.html`` (+ ``curve_loss.png``) into ``out_dir``.

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
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>XR-0 federated run</title>"
             f"<style>{CSS}</style></head><body><h1>XR-0 federated pretraining</h1>"]
    cfg = summary.get("config", {})
    parts.append(
        "<p class='note'>"
        + html.escape(
            f"preset {cfg.get('preset', '?')}, rounds completed {summary.get('rounds_completed', '?')} "
            f"of {cfg.get('federation.rounds', '?')}, local steps {cfg.get('train.local-steps', '?')}, "
            f"seed {cfg.get('seed', '?')}, run {summary.get('run_key', '')}"
        )
        + "</p>"
    )
    sites = summary.get("sites") or []
    if sites:
        anatomies = sorted({a for s in sites for a in s.get("by_anatomy", {})})
        parts.append("<h2>Hospitals</h2>")
        rows = [[s["name"], s.get("images", "")] + [s.get("by_anatomy", {}).get(a, 0) for a in anatomies]
                + [s.get("scanner", "")] for s in sites]
        parts.append(_table(["hospital", "images"] + anatomies + ["scanner"], rows))
    curve = plot_curves(history, out_dir / "curve_loss.png")
    if curve is not None:
        parts.append(f"<h2>Training</h2><img src='{curve.name}' alt='loss curve'>")
    parts.append(privacy_section(history))  # epsilon per hospital per round (xr0_core/privacy; "" without DP)
    parts.append(multimodal_section(summary, history))  # mXR-0 bytes per round and zero-shot ("" when image-only)
    evals = [r for r in history if r["kind"] == "evaluate"]
    # Downstream-task keys (<family>/<task>/...) have their own section; keep the generic tables readable.
    task_keys = {k for r in history for m in [r["metrics"], *(s["metrics"] for s in r["sites"])] for k in m
                 if k.startswith(EVAL_FAMILIES)}
    if evals or summary.get("comparison"):
        parts.append("<h2>Evaluation (frozen backbone)</h2>")
    if summary.get("comparison"):
        comp = summary["comparison"]
        names = sorted({k for row in comp for k in row if k != "backbone"})
        parts.append(_table(["backbone"] + names, [[row["backbone"]] + [row.get(n, "") for n in names] for row in comp]))
    if evals:
        from xr0_core.eval.report import federated_section  # downstream tasks: pretrained vs random

        parts.append(federated_section(out_dir, history))
        names = sorted({k for r in evals for k in r["metrics"]} - task_keys)
        parts.append("<p class='note'>federated evaluation, example-weighted over hospitals</p>")
        parts.append(_table(["round"] + names, [[r["round"]] + [r["metrics"].get(n, "") for n in names] for r in evals]))
    if history:
        names = sorted({k for r in history for s in r["sites"] for k in s["metrics"]} - {"partition-id"} - task_keys)
        parts.append("<h2>Per round, per hospital</h2>")
        parts.append(_table(["round", "kind", "hospital", "status", "reason"] + names, _round_rows(history, names)))
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(cfg, indent=1, sort_keys=True)) + "</pre>")
    parts.append("</body></html>")
    path = out_dir / "report.html"
    atomic_write(path, lambda p: p.write_text("\n".join(parts)))
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


def write_evaluation_report(out_dir: Path, body: dict[str, Any], examples: dict[str, dict[str, list]]) -> Path:
    """``report.html`` of a local ``xr0 evaluate`` run (see :func:`xr0_core.eval.report.write_local_report`)."""
    from xr0_core.eval.report import write_local_report

    return write_local_report(Path(out_dir), body, examples, CSS)
