"""Index a site's data: which images are usable, which are skipped and why, and what annotations exist.

The index is built from the manifest when there is one (``<data_dir>/manifest.csv`` or an explicit
file), otherwise by walking the folder (sorted, so every run sees the same order). Each image is
decoded once (``verify_pixels=True``) because only decoding finds truncated pixel data; a bad file
becomes a :class:`Skipped` entry with its reason and never stops the site.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from xr0_core.data.dicom import UnusableImage
from xr0_core.data.images import is_candidate, read_image, read_image_header
from xr0_core.data.manifest import ManifestError, SiteRecord, load_manifest

MANIFEST_NAME = "manifest.csv"


def hospital_dirs(root: Path) -> list[Path]:
    """Hospital sub-folders of a federation root, sorted by name, hidden ones ignored.

    The one rule that maps a simulated partition ``i`` to a hospital: the ``i``-th folder of this list
    (used by the ClientApp, the coordinator's report names and ``xr0 simulate``).
    """
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


RACY_NS = 2_000_000_000  # a root modified less than 2 s before its listing is listed again next time
_LISTINGS: "OrderedDict[tuple, list[Path]]" = OrderedDict()
_LISTINGS_LOCK = threading.Lock()


def hospital_dirs_cached(root: Path) -> list[Path]:
    """:func:`hospital_dirs`, listed again only when the root folder changed (its inode or modification time).

    A simulated hospital's ClientApp resolves its partition through this list for every message: at 100
    hospitals a listing (100 ``stat`` calls and a sort of paths) per message, at 1,000 ten times that per
    message (issue 27). Adding, removing or renaming a hospital folder changes the root's modification time;
    what it does not see is a hospital *symlink* whose target stops being a folder, which then fails where the
    hospital's data is read. Returns a new list (callers may not edit the cached one)."""
    st = os.stat(root)
    key = (os.path.abspath(root), st.st_dev, st.st_ino, st.st_mtime_ns)
    with _LISTINGS_LOCK:
        hit = _LISTINGS.get(key)
    if hit is None:
        hit = hospital_dirs(root)
        # "Racy" listings are not kept (as git does for its index): a folder changed within the clock's
        # granularity of this listing could change again with the same modification time.
        if time.time_ns() - st.st_mtime_ns > RACY_NS:
            with _LISTINGS_LOCK:
                _LISTINGS[key] = hit
                while len(_LISTINGS) > 8:
                    _LISTINGS.popitem(last=False)
    return list(hit)


class SiteDataError(ValueError):
    """The site's data cannot be used at all; the message says what to do."""


@dataclass(frozen=True)
class Skipped:
    """A file left out of the site's data. ``path`` is relative to the site root when inside it."""

    path: str
    reason: str


@dataclass
class SiteIndex:
    """The usable images of one site.

    Attributes
    ----------
    root : Path
        The site's data folder.
    records : list[SiteRecord]
        Usable images only; ``anatomy`` / ``view`` filled from DICOM tags where the manifest had none.
    skipped : list[Skipped]
        Every file left out, with its reason.
    sizes : list[tuple[int, int]]
        ``(H, W)`` of each usable record, same order as ``records``.
    """

    root: Path
    records: list[SiteRecord]
    skipped: list[Skipped]
    sizes: list[tuple[int, int]]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description of the site (what ``xr0 site check --json`` prints).

        Returns
        -------
        dict
            ``root``, ``usable``, ``skipped`` ([{"path", "reason"}]), ``by_anatomy`` / ``by_view`` /
            ``by_split`` (counts; missing values under ``"unknown"`` / ``"unassigned"``),
            ``height`` / ``width`` ([min, max] or None), ``patients`` (distinct patient ids, None
            when no record has one), ``labels`` (sorted label names), ``has`` (how many records
            have a report, mask, landmarks, boxes, labels, patient_id).
        """
        records = self.records
        patient_ids = {r.patient_id for r in records if r.patient_id is not None}
        heights = [h for h, _ in self.sizes]
        widths = [w for _, w in self.sizes]
        return {
            "root": str(self.root),
            "usable": len(records),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "by_anatomy": _counts(r.anatomy or "unknown" for r in records),
            "by_view": _counts(r.view or "unknown" for r in records),
            "by_split": _counts(r.split or "unassigned" for r in records),
            "height": [min(heights), max(heights)] if heights else None,
            "width": [min(widths), max(widths)] if widths else None,
            "patients": len(patient_ids) if patient_ids else None,
            "labels": sorted({name for r in records for name in r.labels}),
            "has": {
                "report": sum(r.report is not None for r in records),
                "mask": sum(r.mask_path is not None for r in records),
                "landmarks": sum(bool(r.landmarks) for r in records),
                "boxes": sum(bool(r.boxes) for r in records),
                "labels": sum(bool(r.labels) for r in records),
                "patient_id": sum(r.patient_id is not None for r in records),
            },
        }


def _counts(values: Iterator[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def walk_images(root: Path) -> list[Path]:
    """Candidate image files under ``root`` (see :func:`~xr0_core.data.images.is_candidate`), sorted.

    Hidden files and folders are left out, and so is the manifest (a ``.csv`` is never a
    candidate). Symlinked folders are followed once (a site may link its archive in), loops are not.
    """
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.startswith("."):
                continue
            if is_candidate(path) and os.path.isfile(path):
                found.append(Path(path))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


Probe = tuple[dict[str, Any], tuple[int, int]] | str


def probe_image(path: Path, verify_pixels: bool = True) -> Probe:
    """``(meta, (H, W))`` for a usable image, else the one-line reason it is not.

    Module-level (picklable) so worker processes can run it; only metadata travels back, never pixels.
    """
    try:
        if verify_pixels:
            image = read_image(path)
            meta, size = dict(image.meta), (int(image.pixels.shape[0]), int(image.pixels.shape[1]))
        else:
            meta = dict(read_image_header(path))
            size = (int(meta["rows"]), int(meta["columns"]))
        if meta.get("source") == "dicom":
            from xr0_core.data.dicom import dicom_patient_key

            meta["patient_key"] = dicom_patient_key(path)  # a pseudonym for grouping; never leaves the site
        return meta, size
    except UnusableImage as exc:
        return exc.reason
    except Exception as exc:  # a site never crashes on one file (DESIGN D7)
        return f"unexpected error while reading: {type(exc).__name__}: {' '.join(str(exc).split())}"


def _probe_all(paths: list[Path], verify_pixels: bool, progress: bool, workers: int) -> Iterator[Probe]:
    """Probe in order, in this process or in ``workers`` spawned processes (order is preserved)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="checking images", unit="img", file=sys.stderr, dynamic_ncols=True)
    try:
        if workers <= 1 or len(paths) < 2 * workers:
            for path in paths:
                yield probe_image(path, verify_pixels)
                if bar is not None:
                    bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        # spawn, not fork: the caller may hold torch / OpenMP threads that a forked child would inherit.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            chunk = max(1, min(32, len(paths) // (4 * workers)))
            for result in pool.map(partial(probe_image, verify_pixels=verify_pixels), paths, chunksize=chunk):
                if bar is not None:
                    bar.update()
                yield result
    finally:
        if bar is not None:
            bar.close()


def index_site(
    data_dir: str | os.PathLike,
    manifest: Path | None = None,
    *,
    verify_pixels: bool = True,
    progress: bool = False,
    workers: int = 1,
) -> SiteIndex:
    """Find the usable images of a site.

    Parameters
    ----------
    data_dir : path-like
        The site's data folder.
    manifest : Path or None
        A manifest CSV; relative paths in it resolve against ``data_dir``. None: use
        ``<data_dir>/manifest.csv`` when it exists, otherwise walk the folder.
    verify_pixels : bool
        Decode every image (slow; the only way to catch a corrupt compressed stream). False reads
        headers only: non-images, wrong modality, multi-frame, tiny, missing pixel data and pixel
        data cut short of its declared length are still caught.
    progress : bool
        Show a progress bar on stderr.
    workers : int
        Processes that decode in parallel (1: in this process). Each holds one image at a time.

    Returns
    -------
    SiteIndex

    Raises
    ------
    SiteDataError
        Wrong path, empty folder, or no usable image (the message lists the first reasons).
    ManifestError
        A manifest with problems (each with its row number).
    """
    root = Path(os.path.abspath(os.path.expanduser(data_dir)))
    if not root.exists():
        raise SiteDataError(f"data folder not found: {root}; pass --data the folder that holds the site's images")
    if not root.is_dir():
        raise SiteDataError(f"--data must be a folder, got a file: {root}")

    if manifest is not None:
        manifest = Path(os.path.abspath(os.path.expanduser(manifest)))
        if not manifest.is_file():
            raise SiteDataError(f"manifest not found: {manifest}; pass --manifest an existing CSV file")
    elif (root / MANIFEST_NAME).is_file():
        manifest = root / MANIFEST_NAME

    if manifest is not None:
        records = load_manifest(manifest, root=root)
        if not records:
            raise SiteDataError(f"manifest {manifest} has a header but no rows; add one row per image")
    else:
        paths = walk_images(root)
        if not paths:
            raise SiteDataError(
                f"no image files in {root} (looked for DICOM, PNG, JPEG, including subfolders); "
                "check the path, or give a manifest with --manifest"
            )
        records = [SiteRecord(path=p) for p in paths]

    usable: list[SiteRecord] = []
    sizes: list[tuple[int, int]] = []
    skipped: list[Skipped] = []
    present: list[SiteRecord] = []
    for record in records:
        if record.path.is_file():
            present.append(record)
        else:
            reason = "file not found" if not record.path.exists() else "not a file"
            skipped.append(Skipped(_display(record.path, root), reason))

    for record, probed in zip(present, _probe_all([r.path for r in present], verify_pixels, progress, workers)):
        if isinstance(probed, str):
            skipped.append(Skipped(_display(record.path, root), probed))
            continue
        meta, size = probed
        if record.mask_path is not None and not record.mask_path.is_file():
            lost_mask = Skipped(_display(record.mask_path, root), "mask file not found (image kept without its mask)")
            skipped.append(lost_mask)
            record = dataclasses.replace(record, mask_path=None)
        # The manifest wins; DICOM tags fill what it left empty (PatientID as a pseudonym: the privacy unit).
        anatomy, view = record.anatomy or meta.get("anatomy"), record.view or meta.get("view")
        patient = record.patient_id or meta.get("patient_key")
        usable.append(dataclasses.replace(record, anatomy=anatomy, view=view, patient_id=patient))
        sizes.append(size)

    if not usable:
        reasons = Counter(s.reason for s in skipped).most_common(3)
        listed = "; ".join(f"{n} x {reason}" for reason, n in reasons)
        raise SiteDataError(f"no usable image in {root}: {len(skipped)} file(s) skipped ({listed})")
    return SiteIndex(root=root, records=usable, skipped=skipped, sizes=sizes)


__all__ = ["ManifestError", "SiteDataError", "SiteIndex", "Skipped", "index_site", "probe_image", "walk_images"]
