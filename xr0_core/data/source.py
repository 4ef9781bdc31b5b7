"""One interface for a site's decoded images: in RAM (:class:`ImageCache`) or prepared shards (D16).

Everything that reads images for training or the anatomy probes (``BatchMaker``, DP sampling, feature
extraction) takes an :class:`ImageSource`: images by index, ``[1, L, L]`` float32 in [0, 1], plus the records
served (``kept``) and those left out with reasons (``skipped``). :func:`open_site_images` picks the
implementation from ``train.image-cache``:

- ``ram``: decode every image into this process (:class:`ImageCache`; tiny sites, tests);
- ``prepared``: bring ``<state-dir>/prepared/L<load>-uint16`` up to date (incremental: a stat per file
  when nothing changed) and read it memory-mapped (:class:`PreparedImages`);
- ``auto`` (default): ``prepared`` when the site has at least :data:`AUTO_PREPARED_MIN` images or a prepared
  folder already exists, else ``ram``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from xr0_core.config import XR0Config

log = logging.getLogger(__name__)

AUTO_PREPARED_MIN = 1000  # below this a site decodes into RAM in seconds; above, RAM and decode time grow
PREPARED_DTYPE = "uint16"


@runtime_checkable
class ImageSource(Protocol):
    """A site's decoded images by index (``ImageCache`` and ``PreparedImages`` implement it)."""

    kept: list[Any]
    skipped: list[tuple[Any, str]]

    def decode(self) -> "ImageSource": ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> torch.Tensor: ...  # float32 [1, L, L] in [0, 1]


def cache_kind(cfg: XR0Config, n_images: int, state_dir: Path | None) -> str:
    """``"ram"`` or ``"prepared"`` for a site of ``n_images`` (see the module docstring)."""
    kind = cfg.train.image_cache
    if kind != "auto":
        if kind == "prepared" and state_dir is None:
            raise ValueError("train.image-cache = prepared needs the site's state folder")
        return kind
    if state_dir is None:
        return "ram"
    from xr0_core.data.prepared import INDEX_NAME, prepared_dir

    exists = (prepared_dir(state_dir, cfg.train.load_size, PREPARED_DTYPE) / INDEX_NAME).is_file()
    return "prepared" if exists or n_images >= AUTO_PREPARED_MIN else "ram"


def open_site_images(cfg: XR0Config, records: Sequence[Any], state_dir: str | os.PathLike | None, *,
                     data_dir: str | os.PathLike | None = None, prepare_records: Sequence[Any] | None = None,
                     workers: int = 1, reader: Any = None, progress: bool = False) -> ImageSource:
    """The image source for ``records`` at ``cfg.train.load-size``.

    Parameters
    ----------
    cfg : XR0Config
    records : sequence of SiteRecord
        Images to serve, in order (e.g. the SSL records).
    state_dir : path-like or None
        The site's state folder (holds ``prepared/``); None: always in RAM.
    data_dir : path-like, optional
        The site's data root (index keys are relative to it; default: the records' common folder).
    prepare_records : sequence, optional
        Records to prepare (default ``records``); pass all the site's records so evaluation finds its
        held-out images prepared too.
    workers : int
        Decoding processes for images not prepared yet.
    reader : callable, optional
        In-RAM decoder override (tests).
    """
    from xr0_core.data.dataset import ImageCache

    state = Path(state_dir) if state_dir is not None else None
    if cache_kind(cfg, len(records), state) == "ram":
        return ImageCache(records, cfg.train.load_size, reader=reader, progress=progress).decode()
    from xr0_core.data.prepared import PreparedImages, prepare_site, prepared_dir

    folder = prepared_dir(state, cfg.train.load_size, PREPARED_DTYPE)  # type: ignore[arg-type]
    todo = list(prepare_records if prepare_records is not None else records)
    root = data_dir or (os.path.commonpath([str(r.path) for r in todo]) if todo else ".")
    if todo and Path(root).is_file():
        root = Path(root).parent
    report = prepare_site(root, folder, cfg.train.load_size, dtype=PREPARED_DTYPE, workers=workers,
                          paths=[r.path for r in todo], verify=False, progress=progress)
    if report.decoded:
        log.info("prepared %d new or changed images into %s", report.decoded, folder)
    return PreparedImages(records, folder, reader=reader)
