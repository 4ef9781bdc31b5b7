"""The evaluation report: downstream tasks, pretrained vs random per task, pooled and per hospital,
metric-per-round curves, and (local ``xr0 evaluate`` only) qualitative examples. The federated run report
(:mod:`xr0_core.report`) embeds :func:`federated_section`; ``xr0 evaluate`` writes :func:`write_local_report`.
HTML helpers are shared (:mod:`xr0_core.htmlpage`).

Inputs are JSON-able: the coordinator's history (``metrics.json["rounds"]``, evaluate entries hold flat keys
``<task>/<metric>``, ``<task>/random/<metric>``, ``<task>/num-examples``) or an ``xr0 evaluate`` body.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from xr0_core.eval.summary import headline_metrics, split_flat
from xr0_core.htmlpage import details, page
from xr0_core.htmlpage import fmt as _fmt
from xr0_core.htmlpage import table as _table

def evaluation_table(history: list[dict[str, Any]]) -> str:
    """Last evaluate round: task, metric, pooled pretrained / random, then per hospital."""
    evals = [r for r in history if r.get("kind") == "evaluate" and split_flat(r.get("metrics", {}))]
    if not evals:
        return ""
    last = evals[-1]
    pooled = split_flat(last["metrics"])
    sites = sorted((s for s in last.get("sites", []) if s.get("status") == "ok"), key=lambda s: s["name"])
    per_site = {s["name"]: split_flat(s.get("metrics", {})) for s in sites}
    rows = []
    for (task, metric), v in sorted(pooled.items()):
        n = last["metrics"].get(f"{task}/num-examples", "")
        row = [task, metric, n, v.get("pretrained", ""), v.get("random", ""), v.get("pixels", "")]
        for s in sites:
            sv = per_site[s["name"]].get((task, metric), {})
            row.append(f"{_fmt(sv['pretrained']) if 'pretrained' in sv else '-'} / "
                       f"{_fmt(sv['random']) if 'random' in sv else '-'}")
        rows.append(row)
    headers = ["task", "metric", "test examples", "pretrained (pooled)", "random init (pooled)",
               "raw pixels (pooled)"] + \
              [f"{s['name']} (pre / rand)" for s in sites]
    return (f"<h3>Downstream tasks per hospital, round {last['round']}</h3><p class='note'>frozen backbone, light heads trained "
            "at each hospital on its train split, scored on its test split; pooled = weighted by each hospital's "
            "test examples of that task; random init and raw pixels (the same resized image, flattened, same head; "
            "classification and image-image retrieval only) measured in the same dispatch</p>"
            + details(f"every metric of {len({t for t, _ in pooled})} tasks, pooled and per hospital ({len(rows)} rows)",
                      _table(headers, rows)))


def plot_rounds(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Headline metric per task over evaluate rounds: pooled (black), per hospital (dashed), random (grey),
    raw pixels (ochre, where the pixel baseline applies).
    None with fewer than two evaluate rounds (one round is a table, not a curve)."""
    evals = [r for r in history if r.get("kind") == "evaluate" and split_flat(r.get("metrics", {}))]
    if len(evals) < 2:
        return None
    keys = headline_metrics({k for r in evals for k in split_flat(r["metrics"])})
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), dpi=90, squeeze=False)
    for ax, (task, metric) in zip(axes.flat, keys):
        xs = [r["round"] for r in evals]
        for tag, style, colour in (("pretrained", "-o", "black"), ("random", ":s", "grey"), ("pixels", "-.^", "#b07d00")):
            ys = [split_flat(r["metrics"]).get((task, metric), {}).get(tag) for r in evals]
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=colour, label=f"pooled {tag}")
        names = sorted({s["name"] for r in evals for s in r.get("sites", [])})
        for name in names:
            pts = [(r["round"], split_flat(s["metrics"]).get((task, metric), {}).get("pretrained"))
                   for r in evals for s in r.get("sites", []) if s["name"] == name and s.get("status") == "ok"]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot(*zip(*pts), "--", marker=".", alpha=0.6, label=name)
        ax.set_title(f"{task}\n{metric}", fontsize=8)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def federated_section(out_dir: Path, history: list[dict[str, Any]]) -> str:
    """The downstream-evaluation part of the run report (tables + curve PNG); ``""`` without evaluations."""
    table = evaluation_table(history)
    if not table:
        return ""
    png = plot_rounds(history, Path(out_dir) / "eval_rounds.png")
    img = f"<img src='{png.name}' alt='evaluation metrics per round'>" if png is not None else ""
    return table + img


# ------------------------------------------------------------------------------ local: xr0 evaluate


def comparison_table(body: dict[str, Any]) -> str:
    """Task, metric, test examples, evaluated vs random init vs raw pixels, and (on the task's per-unit
    metric) the differences with their paired patient-level bootstrap 95 % intervals."""

    def interval(ci: dict[str, Any], metric: str) -> str:
        return f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci.get("metric") == metric else ""

    rows = []
    for task in sorted(set(body.get("tasks", {})) | set(body.get("baseline_random", {}))):
        pre, rnd = body.get("tasks", {}).get(task, {}), body.get("baseline_random", {}).get(task, {})
        pix = body.get("baseline_pixels", {}).get(task, {})
        ci, ci_pix = body.get("intervals", {}).get(task, {}), body.get("intervals_pixels", {}).get(task, {})
        for metric in sorted(set(pre) | set(rnd)):
            rows.append([task, metric, body.get("counts", {}).get(task, ""), pre.get(metric, ""), rnd.get(metric, ""),
                         pix.get(metric, ""), interval(ci, metric), interval(ci_pix, metric)])
    return _table(["task", "metric", "test examples", "evaluated backbone", "random init", "raw pixels",
                   "minus random init [95 % interval]", "minus raw pixels [95 % interval]"], rows)


def draw_examples(out_dir: Path, examples: dict[str, dict[str, list]]) -> list[tuple[str, str]]:
    """PNG per (backbone, task) with predicted masks / landmarks / boxes next to the truth; (title, file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    written = []
    for backbone, tasks in sorted(examples.items()):
        for task, items in sorted(tasks.items()):
            items = [e for e in items if "image" in e]
            if not items:
                continue
            fig, axes = plt.subplots(1, len(items), figsize=(2.6 * len(items), 2.9), dpi=90, squeeze=False)
            for ax, e in zip(axes.flat, items):
                ax.imshow(e["image"], cmap="gray", vmin=0, vmax=1)
                if task.startswith("segmentation"):
                    ax.contour(e["target"] > 0, levels=[0.5], colors="lime", linewidths=0.8)
                    ax.contour(e["pred"] > 0, levels=[0.5], colors="red", linewidths=0.8)
                elif task.startswith("landmarks"):
                    ax.plot(e["target"][:, 0], e["target"][:, 1], "o", color="lime", ms=3)
                    ax.plot(e["pred"][:, 0], e["pred"][:, 1], "x", color="red", ms=4)
                    ax.set_title(f"MRE {e['error_px']:.1f} px", fontsize=7)
                elif task.startswith("grounding"):
                    for box, colour in ((e["target"], "lime"), (e["pred"], "red")):
                        ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                               edgecolor=colour, lw=1))
                    ax.set_title(f"{e['phrase'][:28]}\nIoU {e['iou']:.2f}", fontsize=6)
                ax.axis("off")
            fig.suptitle(f"{task} ({backbone}): truth green, prediction red", fontsize=8)
            fig.tight_layout()
            name = f"example_{backbone}_{task.replace('/', '_')}.png"
            fig.savefig(Path(out_dir) / name)
            plt.close(fig)
            written.append((f"{task} ({backbone})", name))
    return written


def report_examples_html(examples: dict[str, dict[str, list]]) -> str:
    rows = []
    for backbone, tasks in sorted(examples.items()):
        for task, items in sorted(tasks.items()):
            rows += [[backbone, e["reference"], e["generated"]] for e in items if "generated" in e]
    return _table(["backbone", "reference report", "generated report"], rows) if rows else ""


def write_local_report(out_dir: Path, body: dict[str, Any], examples: dict[str, dict[str, list]]) -> Path:
    """``report.html`` of one ``xr0 evaluate`` run: the comparison table, skipped tasks, qualitative examples."""
    from xr0_core.atomic import atomic_write

    out_dir = Path(out_dir)
    parts = [f"<p class='note'>checkpoint {html.escape(str(body.get('checkpoint')))}"
             f", {body.get('images', '?')} images</p><h2>Tasks (frozen backbone)</h2>", comparison_table(body)]
    if body.get("skipped"):
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in body["skipped"]) + "</ul>")
    pngs = draw_examples(out_dir, examples)
    text = report_examples_html(examples)
    if pngs or text:
        parts.append("<h2>Qualitative examples (test rows)</h2>")
        parts += [f"<h3>{html.escape(t)}</h3><img src='{n}' alt='{html.escape(t)}'>" for t, n in pngs]
        parts.append(text)
    parts.append("<h2>Raw</h2><details><summary>the --json body</summary><pre>"
                 + html.escape(json.dumps(body, indent=1, sort_keys=True)) + "</pre></details>")
    path = out_dir / "report.html"
    document = page("XR-0 evaluation", parts)
    atomic_write(path, lambda p: p.write_text(document))
    return path
