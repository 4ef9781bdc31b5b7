"""The mXR-0 section of a run's ``report.html``: upload bytes per text-sharing mode, and each hospital's
zero-shot retrieval and report-generation numbers next to the random-image-weights baseline.

Inputs are the run summary's ``multimodal`` entry (written by the coordinator, ``run.json``) and the
``metrics.json`` history (evaluate rounds carry ``zeroshot/<task>/<metric>`` and ``.../random/<metric>``).
"""

from __future__ import annotations

import html
from typing import Any

COLUMNS = (("zeroshot/image-report", "recall@5", "image→report R@5"),
           ("zeroshot/report-image", "recall@5", "report→image R@5"),
           ("zeroshot/report-generation", "bleu4", "BLEU-4"),
           ("zeroshot/report-generation", "rouge-l", "ROUGE-L"))


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def sharing_rows(mm: dict[str, Any]) -> list[list[Any]]:
    mib = 1 / 2 ** 20
    rows = []
    for mode, text in mm.get("text_bytes", {}).items():
        label = f"top-k (k={mm.get('text_top_k')})" if mode == "top-k" else mode
        rows.append([label + (" (chosen)" if mode == mm.get("text_sharing") else ""), text * mib,
                     (mm.get("image_bytes", 0) + text) * mib])
    return rows


def zeroshot_rows(history: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per hospital from the last evaluate round: pretrained / random for each zero-shot column."""
    evals = [r for r in history if r.get("kind") == "evaluate"]
    if not evals:
        return []
    rows = []
    for site in sorted(evals[-1]["sites"], key=lambda s: s["name"]):
        m = site.get("metrics", {})
        row: list[Any] = [site["name"]]
        for task, metric, _ in COLUMNS:
            row += [m.get(f"{task}/{metric}", "-"), m.get(f"{task}/random/{metric}", "-")]
        n = m.get("zeroshot/image-report/num-examples", m.get("zeroshot/report-generation/num-examples", "-"))
        row.append(int(n) if isinstance(n, float) else n)
        rows.append(row)
    return rows


def multimodal_section(summary: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """HTML of the mXR-0 section; empty when the run was not multimodal."""
    mm = summary.get("multimodal")
    if not mm:
        return ""
    out = ["<h2>Image-report pretraining (mXR-0)</h2>",
           f"<p class='note'>text-sharing mode <b>{html.escape(str(mm.get('text_sharing')))}</b>: each hospital "
           f"uploads {mm.get('bytes_per_round', 0) / 2 ** 20:.2f} MiB per round (float32; image side "
           f"{mm.get('image_bytes', 0) / 2 ** 20:.2f} MiB). Upload per round for every mode:</p>",
           _table(["text sharing", "text MiB / round", "total MiB / round"], sharing_rows(mm))]
    rows = zeroshot_rows(history)
    if rows:
        headers = ["hospital"]
        for _, _, label in COLUMNS:
            headers += [label, f"{label} random"]
        headers.append("held-out pairs")
        out.append("<p class='note'>zero-shot on each hospital's held-out image-report pairs, with the model's own "
                   "projections and report decoder (no head trained); \"random\" = the round-0 model (random image "
                   "weights, same text tower), measured in the same dispatch. '-': not measured (no reports, or "
                   "that term not trained)</p>")
        out.append(_table(headers, rows))
    return "\n".join(out)
