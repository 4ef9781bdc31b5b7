"""The site manifest: a CSV that names each image and its optional annotations.

Columns (header names are case-insensitive, surrounding spaces ignored)::

    path        required; relative to the manifest's root, or absolute
    patient_id  optional; used to keep one patient in one split and to count patients
    study_id    optional
    anatomy     optional; normalised to the anatomy vocabulary when recognised ("CHEST" -> chest),
                otherwise kept lower-cased
    view        optional; upper-cased (PA, AP, LAT, ...)
    report      optional; free text (quote it: commas and newlines are fine inside quotes)
    split       optional; train | val | test (case-insensitive)
    mask_path   optional; a mask image, resolved like path
    landmarks   optional; JSON list of [x, y] pixel coordinates, e.g. [[120.5, 88], [300, 91]]
    boxes       optional; JSON list of {"phrase": str, "box": [x0, y0, x1, y1]} in pixels
    label_<name> any number; an integer class index >= 0 (binary 0/1 for findings). An empty cell
                is a missing label. "1.0" is accepted (pandas writes integer columns with gaps
                that way); CheXpert-style -1 "uncertain" is not: map it first.

Every problem in the file is collected and reported at once as ``row N: column: what is wrong``
(header = row 0, first data row = row 1), so a site fixes its manifest in one pass.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xr0_core.data.dicom import normalise_anatomy

MANIFEST_COLUMNS = (
    "path",
    "patient_id",
    "study_id",
    "anatomy",
    "view",
    "report",
    "split",
    "mask_path",
    "landmarks",
    "boxes",
)
LABEL_PREFIX = "label_"
SPLITS = ("train", "val", "test")
_MAX_REPORTED_PROBLEMS = 50


class ManifestError(ValueError):
    """A manifest that cannot be used; the message lists every problem as ``row N: column: ...``."""

    def __init__(self, problems: Iterable[str] | str, source: str | os.PathLike | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:_MAX_REPORTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        where = f"manifest {source}" if source is not None else "manifest"
        lines = [f"{where}: {len(self.problems)} problem(s); fix them and run again:"]
        lines += [f"  {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class SiteRecord:
    """One image of a site and what the site knows about it.

    Attributes
    ----------
    path : Path
        Absolute path of the image.
    labels : Mapping[str, int]
        From ``label_<name>`` columns, keyed by ``<name>``; a missing label is an absent key.
    landmarks : tuple of (x, y) or None
        Pixel coordinates in the image as stored.
    boxes : tuple of dict or None
        ``{"phrase": str, "box": (x0, y0, x1, y1)}`` in pixels.
    row : int or None
        1-based data row in the manifest (header = row 0); None for a walked folder.
    """

    path: Path
    patient_id: str | None = None
    study_id: str | None = None
    anatomy: str | None = None
    view: str | None = None
    report: str | None = None
    split: str | None = None
    labels: Mapping[str, int] = field(default_factory=dict, hash=False)
    mask_path: Path | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None
    boxes: tuple[dict, ...] | None = field(default=None, hash=False)
    row: int | None = None


def normalise_manifest_anatomy(value: str | None) -> str | None:
    """Vocabulary name when recognised, else the site's own word lower-cased (kept, not dropped)."""
    if value is None or not value.strip():
        return None
    return normalise_anatomy(value) or " ".join(value.strip().lower().split())


# ----------------------------------------------------------------------------------------- cell parsers


def _resolve(value: str, root: Path) -> Path:
    # abspath, not resolve(): a symlinked image keeps the name the site gave it.
    return Path(os.path.abspath(root / os.path.expanduser(value.strip())))


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _parse_landmarks(text: str) -> tuple[tuple[float, float], ...]:
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError('expected a JSON list of [x, y] pairs, e.g. [[120, 88], [300, 91]]')
    points = []
    for i, point in enumerate(data):
        if not isinstance(point, list) or len(point) != 2:
            raise ValueError(f"landmark {i} is {json.dumps(point)}, expected [x, y]")
        points.append((_finite(point[0]), _finite(point[1])))
    return tuple(points)


def _parse_boxes(text: str) -> tuple[dict, ...]:
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError('expected a JSON list of {"phrase": ..., "box": [x0, y0, x1, y1]}')
    boxes = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or set(item) != {"phrase", "box"}:
            raise ValueError(f'box {i} must be an object with exactly "phrase" and "box"')
        phrase, box = item["phrase"], item["box"]
        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError(f"box {i}: phrase must be a non-empty string")
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"box {i}: box must be [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (_finite(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {i}: need x0 < x1 and y0 < y1, got {box}")
        boxes.append({"phrase": phrase.strip(), "box": (x0, y0, x1, y1)})
    return tuple(boxes)


def _parse_label(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer class index") from None
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{text!r} is not an integer class index")
    if value < 0:
        raise ValueError(
            f"{text!r} is negative; labels are class indices >= 0 (leave the cell empty for a missing "
            "label; map uncertain -1 labels to 0, 1 or empty first)"
        )
    return int(value)


def _parse_split(text: str) -> str:
    value = text.strip().lower()
    if value not in SPLITS:
        raise ValueError(f"{text!r} is not one of {', '.join(SPLITS)}")
    return value


# ----------------------------------------------------------------------------------------------- header


def _check_header(header: list[str] | None, source: Path) -> list[str]:
    if not header or not any(h.strip() for h in header):
        raise ManifestError(["row 0: header: the file is empty; the first line must name the columns"], source)
    names = [h.strip().lower() for h in header]
    problems = []
    if len(names) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
        problems.append("row 0: header: only one column found; save the manifest as comma-separated CSV")
    if "path" not in names:
        problems.append(f"row 0: path: required column missing (found: {', '.join(names)})")
    unknown = [n for n in names if n not in MANIFEST_COLUMNS and not n.startswith(LABEL_PREFIX)]
    if unknown:
        problems.append(
            f"row 0: {', '.join(unknown)}: unknown column(s); known: {', '.join(MANIFEST_COLUMNS)}, "
            f"and {LABEL_PREFIX}<name> for labels"
        )
    empty_labels = [n for n in names if n == LABEL_PREFIX]
    if empty_labels:
        problems.append(f"row 0: {LABEL_PREFIX}: a label column needs a name after '{LABEL_PREFIX}'")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"row 0: {', '.join(duplicates)}: column(s) appear more than once")
    if problems:
        raise ManifestError(problems, source)
    return names


# ------------------------------------------------------------------------------------------------- load


def load_manifest(csv_path: str | os.PathLike, root: Path | None = None) -> list[SiteRecord]:
    """Parse and validate a site manifest.

    Parameters
    ----------
    csv_path : path-like
        The CSV file (UTF-8, a BOM from Excel is fine).
    root : Path or None
        Folder that relative ``path`` / ``mask_path`` cells resolve against; default: the
        manifest's own folder.

    Returns
    -------
    list[SiteRecord]
        One per data row, in file order. Whether the files exist is not checked here (the site
        index reports missing files as skipped, so one lost file does not block a site).

    Raises
    ------
    ManifestError
        Unreadable file, or every problem found, each as ``row N: column: what is wrong``.
    """
    csv_path = Path(csv_path)
    root = Path(os.path.abspath(os.path.expanduser(root if root is not None else csv_path.parent)))
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise ManifestError([f"file not found: {csv_path}"], csv_path) from None
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV"
        raise ManifestError([problem], csv_path) from None
    except (OSError, csv.Error) as exc:
        raise ManifestError([f"unreadable: {exc}"], csv_path) from None

    names = _check_header(rows[0] if rows else None, csv_path)
    problems: list[str] = []
    records: list[SiteRecord] = []
    first_row_of: dict[Path, int] = {}
    for number, cells in enumerate(rows[1:], start=1):
        if not any(c.strip() for c in cells):
            continue  # blank lines (a trailing newline in Excel exports) are not rows
        if len(cells) != len(names):
            problems.append(f"row {number}: *: {len(cells)} cells, the header has {len(names)} columns")
            continue
        record = _parse_row(number, dict(zip(names, cells)), root, problems)
        if record is None:
            continue
        if record.path in first_row_of:
            problems.append(f"row {number}: path: {record.path} is already listed in row {first_row_of[record.path]}")
            continue
        first_row_of[record.path] = number
        records.append(record)
    if problems:
        raise ManifestError(problems, csv_path)
    return records


def _parse_row(number: int, row: dict[str, str], root: Path, problems: list[str]) -> SiteRecord | None:
    def cell(name: str) -> str | None:
        value = row.get(name)
        return value.strip() if value is not None and value.strip() else None

    before = len(problems)
    path_text = cell("path")
    if path_text is None:
        problems.append(f"row {number}: path: empty; every row must name an image")
    parsed: dict[str, Any] = {}
    for name, parser in (("split", _parse_split), ("landmarks", _parse_landmarks), ("boxes", _parse_boxes)):
        text = cell(name)
        if text is None:
            continue
        try:
            parsed[name] = parser(text)
        except json.JSONDecodeError as exc:
            problems.append(f"row {number}: {name}: invalid JSON ({exc.msg} at char {exc.pos})")
        except ValueError as exc:
            problems.append(f"row {number}: {name}: {exc}")
    labels = {}
    for name in row:
        if not name.startswith(LABEL_PREFIX):
            continue
        text = cell(name)
        if text is None:
            continue  # missing label: the key stays absent
        try:
            labels[name[len(LABEL_PREFIX):]] = _parse_label(text)
        except ValueError as exc:
            problems.append(f"row {number}: {name}: {exc}")
    if len(problems) > before:
        return None

    mask = cell("mask_path")
    view = cell("view")
    report = row.get("report")
    return SiteRecord(
        path=_resolve(path_text, root),
        patient_id=cell("patient_id"),
        study_id=cell("study_id"),
        anatomy=normalise_manifest_anatomy(cell("anatomy")),
        view=view.upper() if view else None,
        report=report.strip() if report and report.strip() else None,
        split=parsed.get("split"),
        labels=labels,
        mask_path=_resolve(mask, root) if mask else None,
        landmarks=parsed.get("landmarks"),
        boxes=parsed.get("boxes"),
        row=number,
    )


# ------------------------------------------------------------------------------------------------ write


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError:
        return os.path.abspath(path)


def write_manifest(records: Iterable[SiteRecord], csv_path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Write records as a manifest that :func:`load_manifest` reads back to equal records.

    Parameters
    ----------
    records : iterable of SiteRecord
        The images; label columns are the union of their label names (sorted).
    csv_path : path-like
        Destination CSV (parent folders are created).
    root : path-like
        Paths under it are written relative to it (POSIX separators); others stay absolute.
    """
    records = list(records)
    root = Path(os.path.abspath(os.path.expanduser(root)))
    label_names = sorted({name for r in records for name in r.labels})
    header = list(MANIFEST_COLUMNS) + [LABEL_PREFIX + name for name in label_names]
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in records:
            landmarks = json.dumps([list(p) for p in r.landmarks]) if r.landmarks is not None else ""
            boxes = (
                json.dumps([{"phrase": b["phrase"], "box": list(b["box"])} for b in r.boxes])
                if r.boxes is not None
                else ""
            )
            writer.writerow(
                [
                    _relative(r.path, root),
                    r.patient_id or "",
                    r.study_id or "",
                    r.anatomy or "",
                    r.view or "",
                    r.report or "",
                    r.split or "",
                    _relative(r.mask_path, root) if r.mask_path is not None else "",
                    landmarks,
                    boxes,
                ]
                + [str(r.labels[name]) if name in r.labels else "" for name in label_names]
            )
