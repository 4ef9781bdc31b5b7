"""Prepared site cache: every usable image decoded once into memory-mapped integer shards (D16).

A hospital with 100k+ radiographs cannot decode them into RAM in every process (:class:`ImageCache` holds
float16 ``[N, 1, L, L]``: 200k images at L = 256 are 26 GB, hours of single-core decoding). ``xr0 site
prepare`` decodes each image once, in parallel over the cores, with the same :func:`preprocess` as the
in-RAM cache (shorter side to the preset's ``train.load-size``, centre crop), quantizes it to ``uint16``
(default; 16-bit radiographs keep their precision) or ``uint8``, and appends it to a shard file. Every
training, evaluation and simulation process then reads images by index through :class:`PreparedImages`,
which implements the same interface as :class:`ImageCache` (``kept``, ``skipped``, ``len``, ``[i]``), so
:class:`~xr0_core.data.dataset.BatchMaker` and everything above it does not know which one it reads.

Layout of a prepared folder (one per load size and pixel type)::

    index.json          format, load size, dtype, data root, shards (image count, sha256), and per file:
                        size + mtime (change detection), content sha256 (a stable image id), shard, slot,
                        crc32 of the slot's pixels; or the reason the file is unusable
    shard-00000.bin     raw [n, L, L] pixels, each slot padded to a 4096-byte page

Why these choices:

- Change detection uses (size, mtime_ns) like make / rsync: hashing every source file on every rerun would
  read terabytes. A changed file gets a new slot; its old slot is dead (a shard whose slots are all dead is
  deleted).
- Shards are append-only and immutable once indexed; the index is rewritten atomically after every shard,
  so a killed ``prepare`` resumes where it stopped (shard files the index does not name are leftovers of a
  crash and are deleted).
- Each slot carries a crc32 that every read checks: a corrupt shard is never silently read. A read that
  fails its checksum logs a warning, decodes the source file instead (the pixels stay correct), and the
  next ``prepare`` (which verifies every slot) rebuilds the shard.
- Reads go through ``mmap`` and release the pages they touched (``MADV_DONTNEED``): file pages stay in the
  kernel's page cache, shared between processes, but do not accumulate in the training process's RSS, so
  its memory does not grow with the site's size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

PREPARED_FORMAT = "xr0-prepared/1"
INDEX_NAME = "index.json"
PAGE = 4096
DEFAULT_SHARD_IMAGES = 1024
DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


class PreparedCacheError(ValueError):
    """The prepared folder cannot be used; the message says what to do."""


def prepared_dir(state_dir: str | os.PathLike, load_size: int, dtype: str = "uint16") -> Path:
    """Where a site keeps its prepared images: ``<state_dir>/prepared/L<load_size>-<dtype>``."""
    return Path(state_dir) / "prepared" / f"L{int(load_size)}-{dtype}"


def slot_bytes(load_size: int, dtype: str) -> int:
    """Bytes of one slot: ``load_size**2`` pixels, padded to a page so a read can release exactly its pages."""
    raw = int(load_size) ** 2 * np.dtype(DTYPES[dtype]).itemsize
    return -(-raw // PAGE) * PAGE


def quantize(image: torch.Tensor, dtype: str) -> np.ndarray:
    """``[1, L, L]`` float in [0, 1] -> ``[L, L]`` integer (round to nearest)."""
    top = float(np.iinfo(DTYPES[dtype]).max)
    x = image.detach().float().reshape(image.shape[-2], image.shape[-1]).clamp(0.0, 1.0).numpy()
    return np.rint(x * top).astype(DTYPES[dtype])


def dequantize(pixels: np.ndarray) -> torch.Tensor:
    """``[L, L]`` integer -> ``[1, L, L]`` float32 in [0, 1]."""
    top = float(np.iinfo(pixels.dtype).max)
    return torch.from_numpy(pixels.astype(np.float32) / np.float32(top))[None]


# ---------------------------------------------------------------------------------------------- index
@dataclass
class PreparedIndex:
    """In-memory form of ``index.json`` (see the module docstring)."""

    root: str
    load_size: int
    dtype: str
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> "PreparedIndex | None":
        path = folder / INDEX_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("prepared index %s unreadable (%s): preparing again", path, exc)
            return None
        if data.get("format") != PREPARED_FORMAT:
            raise PreparedCacheError(f"{path} is not an XR-0 prepared index (format {data.get('format')!r}); "
                                     "remove the folder or pick another --out")
        return cls(root=data["root"], load_size=int(data["load_size"]), dtype=data["dtype"],
                   images=data["images"], skipped=data["skipped"], shards=data["shards"])

    def save(self, folder: Path) -> None:
        from xr0_core.atomic import atomic_write

        payload = json.dumps({"format": PREPARED_FORMAT, "root": self.root, "load_size": self.load_size,
                              "dtype": self.dtype, "shards": self.shards, "images": self.images,
                              "skipped": self.skipped}, separators=(",", ":"))
        atomic_write(folder / INDEX_NAME, lambda tmp: Path(tmp).write_text(payload))


def _key(path: Path, root: Path) -> str:
    """Index key: the path relative to the data root (POSIX), absolute when outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------- workers
def _prepare_one(path: str, load_size: int, dtype: str) -> tuple[str, Any, str, tuple[int, int] | None]:
    """Decode one file into quantized pixel bytes (runs in a worker process; module-level for pickling).

    Returns ``(path, bytes | reason, content sha256, (size, mtime_ns) read before decoding)``.
    """
    from xr0_core.data.dataset import preprocess
    from xr0_core.data.images import read_image

    st = _stat(Path(path))
    digest = ""
    try:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        image = preprocess(read_image(path).pixels, load_size)
        return path, quantize(image, dtype).tobytes(), digest, st
    except Exception as exc:  # noqa: BLE001 -- one bad file never stops a site (D7); its reason is kept
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        return path, str(reason), digest, st


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def _decode_all(paths: list[str], load_size: int, dtype: str, workers: int) -> Iterator[tuple]:
    if workers <= 1 or len(paths) < 2 * workers:
        # One intra-op thread here too: torch's thread pool on these small per-image ops costs ~10x the work
        # on a busy machine (measured: 31 ms vs 2.3 ms per image on 2 shared cores).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for p in paths:
                yield _prepare_one(p, load_size, dtype)
        finally:
            torch.set_num_threads(threads)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    # spawn, not fork: the caller may hold torch / OpenMP threads a forked child would inherit broken.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as pool:
        chunk = max(1, min(16, len(paths) // (8 * workers)))
        yield from pool.map(partial(_prepare_one, load_size=load_size, dtype=dtype), paths, chunksize=chunk)


# ---------------------------------------------------------------------------------------------- prepare
@dataclass
class PrepareReport:
    """What one ``prepare`` run did (JSON-ready through :meth:`as_dict`)."""

    folder: str
    images: int = 0  # usable images in the cache after the run
    unusable: int = 0  # files that could not be decoded (reasons in the index)
    added: int = 0  # files decoded for the first time
    changed: int = 0  # files re-prepared because size or mtime changed
    removed: int = 0  # files gone from the data folder
    corrupt_shards: list[str] = field(default_factory=list)  # failed verification, rebuilt
    decoded: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["images_per_second"] = self.images_per_second
        return out


class _Lock:
    """Exclusive lock on the prepared folder (two processes of one site must not append at once)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"

    def __enter__(self) -> "_Lock":
        import fcntl

        self.fh = open(self.path, "a+")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _candidates(data_dir: Path, paths: Sequence[str | os.PathLike] | None, manifest: Path | None) -> list[Path]:
    if paths is not None:
        return [Path(os.path.abspath(p)) for p in paths]
    from xr0_core.data.index import MANIFEST_NAME, SiteDataError, walk_images

    if manifest is None and (data_dir / MANIFEST_NAME).is_file():
        manifest = data_dir / MANIFEST_NAME
    if manifest is not None:
        from xr0_core.data.manifest import load_manifest

        return [Path(os.path.abspath(r.path)) for r in load_manifest(manifest, root=data_dir)]
    found = walk_images(data_dir)
    if not found:
        raise SiteDataError(f"no image files in {data_dir} (DICOM, PNG, JPEG); check --data")
    return found


def verify_shards(folder: Path, index: PreparedIndex) -> list[str]:
    """Shards whose file is missing, of the wrong length, or holding a slot that fails its crc32."""
    size = slot_bytes(index.load_size, index.dtype)
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for entry in index.images.values():
        by_shard.setdefault(entry["shard"], []).append((entry["slot"], entry["crc32"]))
    bad = []
    for name, meta in index.shards.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["images"] * size:
            bad.append(name)
            continue
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if any(zlib.crc32(mm[slot * size:(slot + 1) * size]) != crc for slot, crc in by_shard.get(name, [])):
                bad.append(name)
    return bad


def prepare_site(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    load_size: int,
    *,
    dtype: str = "uint16",
    workers: int = 1,
    manifest: str | os.PathLike | None = None,
    paths: Sequence[str | os.PathLike] | None = None,
    verify: bool = True,
    progress: bool = False,
    shard_images: int = DEFAULT_SHARD_IMAGES,
) -> PrepareReport:
    """Bring the prepared folder ``out_dir`` up to date with the site's files (incremental, resumable).

    Parameters
    ----------
    data_dir : path-like
        The site's data folder.
    out_dir : path-like
        The prepared folder (see :func:`prepared_dir`); created if missing.
    load_size : int
        Shorter side after resizing (the preset's ``train.load-size``).
    dtype : {"uint16", "uint8"}
    workers : int
        Decoding processes (1: in this process).
    manifest : path-like, optional
        A manifest CSV (default: ``DATA/manifest.csv`` if present, else every image file under DATA).
    paths : sequence of path-like, optional
        Prepare exactly these files instead (the training process passes its records).
    verify : bool
        Check every slot's crc32 first and rebuild corrupt shards (reads the whole cache once). The training
        process passes False: every read is checked anyway.
    progress : bool
        Progress bar on stderr.
    shard_images : int
        Images per shard file.

    Returns
    -------
    PrepareReport
    """
    if dtype not in DTYPES:
        raise PreparedCacheError(f"pixel type {dtype!r} not supported; use one of {', '.join(DTYPES)}")
    if workers < 1 or shard_images < 1 or load_size < 2:
        raise PreparedCacheError("workers and shard_images must be >= 1 and load_size >= 2")
    root = Path(os.path.abspath(os.path.expanduser(data_dir)))
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(folder=str(folder))
    t0 = time.perf_counter()
    with _Lock(folder):
        index = PreparedIndex.load(folder)
        if index is not None and (index.load_size != load_size or index.dtype != dtype):
            raise PreparedCacheError(f"{folder} holds images at load size {index.load_size} ({index.dtype}), not "
                                     f"{load_size} ({dtype}); use prepared_dir() for a separate folder")
        if index is None or index.root != str(root):
            index = PreparedIndex(root=str(root), load_size=load_size, dtype=dtype)
        # Leftovers of a killed run: shard files the index does not name.
        for stray in folder.glob("shard-*.bin"):
            if stray.name not in index.shards:
                stray.unlink()
        if verify:
            for name in verify_shards(folder, index):
                report.corrupt_shards.append(name)
                log.warning("prepared shard %s is corrupt: its images are prepared again", folder / name)
                _drop_shard(folder, index, name)

        files = _candidates(root, paths, Path(manifest) if manifest else None)
        keys = {_key(p, root): p for p in files}
        for key in [k for k in index.images if k not in keys] if paths is None else []:
            _drop_image(index, key)
            report.removed += 1
        for key in [k for k in index.skipped if k not in keys] if paths is None else []:
            del index.skipped[key]
        todo: list[str] = []
        for key, path in keys.items():
            st = _stat(path)
            old = index.images.get(key) or index.skipped.get(key)
            if old is not None and st is not None and (old["size"], old["mtime_ns"]) == st:
                continue
            if old is not None:
                report.changed += 1
                _drop_image(index, key)
                index.skipped.pop(key, None)
            elif st is not None:
                report.added += 1
            todo.append(str(path))
        _collect_dead_shards(folder, index)
        if todo:
            _write_new(folder, index, root, todo, load_size, dtype, workers, progress, shard_images, report)
        index.save(folder)
        report.images, report.unusable = len(index.images), len(index.skipped)
    report.seconds = time.perf_counter() - t0
    return report


def _drop_image(index: PreparedIndex, key: str) -> None:
    entry = index.images.pop(key, None)
    if entry is not None and entry["shard"] in index.shards:
        index.shards[entry["shard"]]["live"] -= 1


def _drop_shard(folder: Path, index: PreparedIndex, name: str) -> None:
    for key in [k for k, e in index.images.items() if e["shard"] == name]:
        del index.images[key]  # unknown to the index now: prepared again below as a new file
    index.shards.pop(name, None)
    (folder / name).unlink(missing_ok=True)


def _collect_dead_shards(folder: Path, index: PreparedIndex) -> None:
    for name in [n for n, m in index.shards.items() if m["live"] <= 0]:
        index.shards.pop(name)
        (folder / name).unlink(missing_ok=True)


def _next_shard_name(index: PreparedIndex, folder: Path) -> str:
    used = [int(n[6:11]) for n in index.shards] + [int(p.name[6:11]) for p in folder.glob("shard-*.bin")]
    return f"shard-{max(used, default=-1) + 1:05d}.bin"


def _write_new(folder: Path, index: PreparedIndex, root: Path, todo: list[str], load_size: int, dtype: str,
               workers: int, progress: bool, shard_images: int, report: PrepareReport) -> None:
    """Decode ``todo`` and append the images to new shards; the index is saved after every full shard."""
    size = slot_bytes(load_size, dtype)
    pad = b""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="preparing images", unit="img", file=sys.stderr, dynamic_ncols=True)
    fh = None
    name, slot, pending = "", 0, {}

    def close_shard() -> None:
        nonlocal fh
        if fh is None:
            return
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        fh = None
        if slot:
            index.shards[name] = {"images": slot, "live": slot}
            index.images.update(pending)
        index.save(folder)

    try:
        for path, result, digest, st in _decode_all(todo, load_size, dtype, workers):
            key = _key(Path(path), root)
            if st is None:  # vanished while we worked
                continue
            report.decoded += 1
            if isinstance(result, str):
                index.skipped[key] = {"size": st[0], "mtime_ns": st[1], "reason": result}
            else:
                if fh is None:
                    name, slot, pending = _next_shard_name(index, folder), 0, {}
                    fh = open(folder / name, "wb")
                pad = pad if len(pad) == size - len(result) else b"\0" * (size - len(result))
                data = result + pad
                fh.write(data)
                pending[key] = {"size": st[0], "mtime_ns": st[1], "sha256": digest, "shard": name, "slot": slot,
                                "crc32": zlib.crc32(data)}
                slot += 1
                if slot == shard_images:
                    close_shard()
            if bar is not None:
                bar.update()
    finally:
        close_shard()
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------- read
class CorruptPreparedImage(RuntimeError):
    """A prepared slot fails its checksum."""


class PreparedImages:
    """The site's images read by index from a prepared folder; the :class:`ImageCache` interface.

    Parameters
    ----------
    records : sequence of SiteRecord (anything with ``.path``)
        Records to serve, in this order. A record the index does not hold (unusable at preparation, or not
        prepared) goes to :attr:`skipped` with the reason.
    folder : path-like
        The prepared folder (written by :func:`prepare_site`).
    reader : callable, optional
        Fallback decoder for a slot that fails its checksum (default ``read_image``).

    Attributes
    ----------
    kept : list
        Records served, index ``i`` = ``self[i]``.
    skipped : list[tuple[record, str]]
    load_size : int
    """

    def __init__(self, records: Sequence[Any], folder: str | os.PathLike, *, reader: Any = None) -> None:
        self.folder = Path(folder)
        index = PreparedIndex.load(self.folder)
        if index is None:
            raise PreparedCacheError(f"no prepared images in {self.folder}; run `xr0 site prepare --data DIR`")
        self.load_size = index.load_size
        self.dtype = index.dtype
        self._np_dtype = np.dtype(DTYPES[index.dtype])
        self._slot = slot_bytes(index.load_size, index.dtype)
        root = Path(index.root)
        self.kept: list[Any] = []
        self.skipped: list[tuple[Any, str]] = []
        shard_names: dict[str, int] = {}
        where, crcs, digests = [], [], []
        for rec in records:
            key = _key(Path(os.path.abspath(rec.path)), root)
            entry = index.images.get(key)
            if entry is None:
                why = index.skipped.get(key, {}).get("reason", "not prepared (run `xr0 site prepare`)")
                self.skipped.append((rec, why))
                continue
            self.kept.append(rec)
            sid = shard_names.setdefault(entry["shard"], len(shard_names))
            where.append((sid, entry["slot"]))
            crcs.append(entry["crc32"])
            digests.append(entry["sha256"])
        # Compact arrays, not per-image dicts: RAM per image is a few bytes plus its record.
        self._where = np.asarray(where, dtype=np.int64).reshape(-1, 2)
        self._crc = np.asarray(crcs, dtype=np.uint32)
        self._sha = digests
        self._shards = [self.folder / n for n in shard_names]
        self._maps: dict[int, mmap.mmap] = {}
        self._pid = os.getpid()
        self._reader = reader
        self.corrupt_reads = 0

    def decode(self) -> "PreparedImages":
        """Nothing to decode (interface of :class:`ImageCache`)."""
        return self

    def __len__(self) -> int:
        return len(self.kept)

    def content_sha256(self, i: int) -> str:
        """SHA-256 of image ``i``'s source file at preparation: a stable per-image id."""
        return self._sha[i]

    def _map(self, sid: int) -> mmap.mmap:
        if os.getpid() != self._pid:  # a forked DataLoader worker opens its own maps
            self._maps, self._pid = {}, os.getpid()
        mm = self._maps.get(sid)
        if mm is None:
            with open(self._shards[sid], "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[sid] = mm
        return mm

    def __getitem__(self, i: int) -> torch.Tensor:
        """float32 ``[1, load_size, load_size]`` in [0, 1]."""
        sid, slot = (int(v) for v in self._where[i])
        start = slot * self._slot
        try:
            mm = self._map(sid)
            data = mm[start:start + self._slot]
            if len(data) == self._slot and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED, start, self._slot)  # keep RSS flat (see module docstring)
        except (OSError, ValueError) as exc:
            data, why = b"", f"unreadable shard ({exc})"
        else:
            why = "checksum mismatch"
        if len(data) != self._slot or zlib.crc32(data) != int(self._crc[i]):
            return self._fallback(i, why)
        n = self.load_size ** 2
        pixels = np.frombuffer(data, dtype=self._np_dtype, count=n).reshape(self.load_size, self.load_size)
        return dequantize(pixels)

    def _fallback(self, i: int, why: str) -> torch.Tensor:
        """A corrupt slot is never used: decode the source file, warn, and leave the rebuild to ``prepare``."""
        from xr0_core.data.dataset import preprocess

        self.corrupt_reads += 1
        shard = self._shards[int(self._where[i, 0])]
        log.warning("prepared image %d in %s: %s; decoding the source file instead. Run `xr0 site prepare` "
                    "to rebuild the shard", i, shard, why)
        if self._reader is None:
            from xr0_core.data.images import read_image

            self._reader = read_image
        try:
            image = preprocess(self._reader(self.kept[i].path).pixels, self.load_size)
        except Exception as exc:  # noqa: BLE001
            raise CorruptPreparedImage(f"prepared image {self.kept[i].path} is corrupt in {shard} ({why}) and its "
                                       f"source cannot be decoded ({exc}); run `xr0 site prepare`") from exc
        # Same quantization as the shard, so a fallback image equals what the rebuilt shard will hold.
        return dequantize(quantize(image, self.dtype))

    def __getstate__(self) -> dict[str, Any]:  # picklable for spawned DataLoader workers: maps reopen lazily
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state


def iter_batches(source: Any, batch_size: int) -> Iterable[torch.Tensor]:
    """Images of an image source in order, ``[b, 1, L, L]`` float32 batches."""
    for start in range(0, len(source), batch_size):
        yield torch.stack([source[i] for i in range(start, min(len(source), start + batch_size))])
