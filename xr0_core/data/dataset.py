"""Decoded-image cache and deterministic SSL batches (D5, D7).

:class:`ImageCache` decodes every usable image of a site once (``read_image``), resizes it so the shorter
side is ``train.load-size``, centre-crops the longer side to a square, and keeps it as float16 in memory.
Centre-cropping (rather than padding) keeps the resolution of elongated studies (spine, long bones) at the
cost of their far ends; multi-crop SSL and the centre evaluation view both see the central part.

:func:`make_batch` builds the batch of global step ``step`` from ``(seed, site, step)`` alone: the same triple
gives the same batch whatever happened before, which makes a federated resume exact and lets DataLoader
workers build steps in any order. Each image's views are keyed by its stable key (path), not by its position
in the batch (see :meth:`BatchMaker.build`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xr0_core.config import XR0Config
from xr0_core.data.views import N_GLOBAL, MultiCropViews, ViewAugment, sample_ibot_masks
from xr0_core.runtime import torch_generator

log = logging.getLogger(__name__)

PROGRESS_MIN_IMAGES = 50


def ssl_records(records: Iterable[Any]) -> list[Any]:
    """Records usable for self-supervision: everything except the held-out test split."""
    return [r for r in records if getattr(r, "split", None) != "test"]


def preprocess(pixels: np.ndarray | torch.Tensor, load_size: int) -> torch.Tensor:
    """Decoded pixels ``[H, W]`` in [0, 1] -> square ``[1, load_size, load_size]`` float32.

    Non-finite values (a broken decode) become 0, values are clamped to [0, 1]; the shorter side is resized to
    ``load_size`` (antialiased) and the longer side centre-cropped.
    """
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32))
    if x.ndim != 2 or min(x.shape) < 2:
        raise ValueError(f"expected a 2-D image of at least 2x2 pixels, got shape {tuple(x.shape)}")
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
    h, w = x.shape
    scale = load_size / min(h, w)
    nh, nw = max(load_size, int(round(h * scale))), max(load_size, int(round(w * scale)))
    x = F.interpolate(x[None, None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - load_size) // 2, (nw - load_size) // 2
    return x[:, top:top + load_size, left:left + load_size].clamp_(0.0, 1.0)


class ImageCache:
    """All usable images of a site, decoded once, as float16 ``[N, 1, load_size, load_size]``.

    Decoding is lazy: the first access (``len``, indexing, :meth:`decode`) decodes everything, with a
    progress bar on stderr for more than 50 images. An image that fails to decode now (it passed indexing
    earlier, but files change) is skipped with a warning and listed in :attr:`skipped`; the site keeps going.

    Parameters
    ----------
    records : sequence of SiteRecord (anything with ``.path``)
    load_size : int
    reader : callable, optional
        ``reader(path) -> object with .pixels [H, W] float32 in [0, 1]``; default
        :func:`xr0_core.data.images.read_image`.
    progress : bool
        Show a progress bar (only for more than 50 images).
    """

    def __init__(self, records: Sequence[Any], load_size: int, *, reader: Callable[[Any], Any] | None = None,
                 progress: bool = True) -> None:
        self.records = list(records)
        self.load_size = int(load_size)
        self._reader = reader
        self._progress = progress
        self._images: torch.Tensor | None = None
        self.kept: list[Any] = []
        self.skipped: list[tuple[Any, str]] = []

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray | torch.Tensor], load_size: int) -> "ImageCache":
        """A cache over in-memory images ``[H, W]`` in [0, 1] (tests, benchmarks)."""
        cache = cls([], load_size)
        cache._images = torch.stack([preprocess(a, load_size) for a in arrays]).to(torch.float16)
        cache.kept = list(range(len(arrays)))
        return cache

    def decode(self) -> "ImageCache":
        if self._images is not None:
            return self
        reader = self._reader
        if reader is None:
            from xr0_core.data.images import read_image

            reader = read_image
        out: list[torch.Tensor] = []
        it: Iterable[Any] = self.records
        if self._progress and len(self.records) > PROGRESS_MIN_IMAGES:
            from tqdm import tqdm

            it = tqdm(self.records, desc="decoding images", unit="img", file=sys.stderr, leave=False)
        for rec in it:
            try:
                out.append(preprocess(reader(rec.path).pixels, self.load_size).to(torch.float16))
                self.kept.append(rec)
            except Exception as exc:  # noqa: BLE001 -- one bad file must not stop a site (D7)
                self.skipped.append((rec, f"{type(exc).__name__}: {exc}"))
                log.warning("skipping %s: %s", getattr(rec, "path", rec), exc)
        self._images = (torch.stack(out) if out
                        else torch.zeros(0, 1, self.load_size, self.load_size, dtype=torch.float16))
        return self

    @property
    def images(self) -> torch.Tensor:
        """float16 ``[N, 1, load_size, load_size]``."""
        return self.decode()._images  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        """float32 ``[1, load_size, load_size]`` in [0, 1]."""
        return self.images[i].float()


class BatchMaker:
    """Builds the SSL batch of any global step from ``(seed, site, step)``.

    Parameters
    ----------
    cache : ImageCache
    cfg : XR0Config
    site : str
        Site name; part of every seed so sites draw different batches.
    patch_size : int
        Backbone patch size (mask grid = ``model.img-size // patch_size``).
    augment : ViewAugment, optional
    """

    def __init__(self, cache: ImageCache, cfg: XR0Config, *, site: str, patch_size: int,
                 augment: ViewAugment | None = None) -> None:
        self.cache = cache
        self.cfg = cfg
        self.site = site
        self.seed = cfg.seed
        self.views = MultiCropViews(cfg, augment)
        self.grid = cfg.model.img_size // patch_size
        self._keys: list[str] | None = None

    def indices(self, step: int, batch_size: int) -> torch.Tensor:
        """Image indices of ``step``: uniform with replacement, from the generator of (seed, site, step)."""
        n = len(self.cache)
        if n == 0:
            raise ValueError(f"site {self.site!r} has no decodable images to train on")
        g = torch_generator(self.seed, "batch", self.site, step)
        return torch.randint(0, n, (batch_size,), generator=g)

    def __call__(self, step: int, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """Batch of ``step``: ``global`` [B, 2, 1, S, S], ``local`` [B, L, 1, s, s], ``masks`` bool [B, 2, N],
        ``index`` long [B] (cache indices; never leaves the site)."""
        bsz = int(batch_size or self.cfg.train.batch_size)
        return self.build(step, self.indices(step, bsz))

    def image_key(self, j: int) -> str:
        """Stable key of cache image ``j`` (its path; the index for in-memory test caches): what seeds its views."""
        if self._keys is None:
            self._keys = [image_key(r) for r in self.cache.kept]
        return self._keys[j]

    def build(self, step: int, idx: torch.Tensor, *, secret: int | None = None,
              repeats: Mapping[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Views and masks of the given cache indices ``idx [B]`` at ``step`` (same layout as ``__call__``).

        Each image's views and iBOT masks come from a generator keyed by (seed, the image's stable key, step,
        and which repeat of the image in this batch it is), never by its position in the batch: adding or
        removing another image changes nothing about this one's views. ``secret`` replaces the public run
        seed under DP (a secret per-round seed: the coordinator knows the run seed). DP training
        (xr0_core/privacy) draws ``idx`` itself by Poisson sampling of privacy units. ``repeats``: how often
        each index already occurred earlier in the step's batch, when ``idx`` is a later block of it (a
        data-parallel rank builds only its block, with the views the whole batch would give it).
        """
        glob, loc, masks = [], [], []
        seen: dict[int, int] = {j: n - 1 for j, n in (repeats or {}).items()}
        source = ("secret", secret) if secret is not None else ("run", self.seed, self.site)
        for j in idx.tolist():
            repeat = seen[j] = seen.get(j, -1) + 1
            g = torch_generator(*source, "views", self.image_key(j), step, repeat)
            v = self.views(self.cache[j], g)
            glob.append(v["global"])
            loc.append(v["local"])
            masks.append(sample_ibot_masks(N_GLOBAL, self.grid, self.cfg.ssl, g))
        return {"global": torch.stack(glob), "local": torch.stack(loc), "masks": torch.stack(masks), "index": idx}


def image_key(record: Any) -> str:
    """A stable per-image key within a site: the record's path (or the record itself, e.g. an int)."""
    return str(getattr(record, "path", record))


def make_batch(cache: ImageCache, cfg: XR0Config, *, site: str, step: int, patch_size: int,
               batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """Functional form of :class:`BatchMaker` (same output for the same arguments)."""
    return BatchMaker(cache, cfg, site=site, patch_size=patch_size)(step, batch_size)


class StepDataset(torch.utils.data.Dataset):
    """Map-style dataset over global steps ``start .. start + n - 1`` (item = a whole batch), so a
    ``DataLoader(batch_size=None, num_workers=k)`` prefetches batches in parallel without changing them."""

    def __init__(self, maker: BatchMaker, start: int, n: int) -> None:
        self.maker, self.start, self.n = maker, start, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.maker(self.start + i)


