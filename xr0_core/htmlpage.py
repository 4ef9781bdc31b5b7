"""HTML building blocks shared by the run report (:mod:`xr0_core.report`) and the evaluation report
(:mod:`xr0_core.eval.evaluation_report`): one self-contained page (inline CSS, no script, no CDN), tables that
leave out empty columns and scroll inside the page instead of widening it, images, folded blocks.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:1.5em;max-width:1100px;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin:0 0 .3em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.scroll{overflow-x:auto;max-width:100%;margin:.5em 0 1.2em}
section{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
td.text{text-align:left;white-space:normal}
.note{color:#555;font-size:13px}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;background:#f7f7f7;padding:.6em}
details{margin:.5em 0} summary{cursor:pointer;font-weight:600}
.better{color:#0a6b2d;font-weight:600} .worse{color:#a4161a;font-weight:600} .unclear{color:#6c5d00}
"""


def fmt(value: Any) -> str:
    """A table cell: 4 significant digits for floats, ``-`` for NaN, escaped text otherwise."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value == "")


def table(headers: list[str], rows: Iterable[list[Any]], *, keep_empty: bool = False, raw: bool = False,
          text_columns: int = 1) -> str:
    """An HTML table in a horizontally scrolling box; columns whose every cell is empty are left out.

    Parameters
    ----------
    headers : column titles
    rows : one list of cells per row (floats formatted by :func:`fmt`)
    keep_empty : keep columns that are empty in every row
    raw : cells are already HTML (not escaped); for verdict badges and links
    text_columns : the first columns that hold names (left-aligned, may wrap)
    """
    rows = [list(r) for r in rows]
    keep = [i for i in range(len(headers)) if keep_empty or any(not _empty(r[i]) for r in rows if i < len(r))]
    if not rows:
        keep = list(range(len(headers)))
    cell = (lambda c: str(c) if not isinstance(c, float) else fmt(c)) if raw else fmt
    head = "".join(f"<th>{html.escape(headers[i])}</th>" for i in keep)
    left = set(keep[:text_columns])
    body = "".join("<tr>" + "".join(f"<td{' class=text' if i in left else ''}>"
                                    f"{cell(r[i]) if i < len(r) and r[i] is not None else ''}</td>" for i in keep)
                   + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def image(src: str, alt: str) -> str:
    """A PNG next to the page (relative ``src``)."""
    return f"<img src='{html.escape(src)}' alt='{html.escape(alt)}'>"


def details(summary: str, body: str) -> str:
    """A folded block: ``summary`` visible, ``body`` (HTML) on click."""
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def page(title: str, parts: Iterable[str]) -> str:
    """A whole HTML document: ``title`` as ``<title>`` and ``<h1>``, then the non-empty ``parts``."""
    body = "\n".join(p for p in parts if p)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
