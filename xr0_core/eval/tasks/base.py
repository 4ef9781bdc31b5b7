"""What every evaluation task shares: the evaluation view, its geometry, frozen features, the split.

The evaluation view is a **letterbox**: the whole image scaled so its longer side is ``model.img-size`` and
padded (black, i.e. 0 before normalisation) to a square. Unlike the centre crop used for SSL, it keeps every
pixel, so no landmark, box or mask region falls outside the view, and a point maps back to the original
image exactly (:class:`ViewGeometry`). Pixel coordinates follow the manifest: ``(x, y)`` with the centre of
pixel ``(col, row)`` at ``(col, row)``.

Features are extracted once per backbone (CLS and patch tokens, no gradient, batched) and shared by every
task; heads train on CPU tensors afterwards, so a ViT-B backbone is run exactly once per image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.runtime import derive_seed

log = logging.getLogger(__name__)

TRAIN, TEST = "train", "test"


class EvalDataError(ValueError):
    """An annotation that cannot be used (wrong mask size, landmark outside the image, ...).

    The message names the manifest row and the column: ``row 12: mask_path: ...``.
    """


def where(record: Any) -> str:
    """``row N`` of the manifest, or the file name for a record without a row."""
    row = getattr(record, "row", None)
    return f"row {row}" if row is not None else f"file {getattr(record, 'path', record)}"


@dataclass(frozen=True)
class ViewGeometry:
    """How original pixel coordinates map into the letterboxed evaluation view.

    ``view = (orig + 0.5) * scale + offset - 0.5`` per axis (pixel centres at integers, bilinear resize
    with ``align_corners=False``).
    """

    height: int
    width: int
    scale_x: float
    scale_y: float
    offset_x: int
    offset_y: int
    size: int  # view side
    spacing_mm: tuple[float, float] | None = None  # (row, column) mm per original pixel

    @classmethod
    def letterbox(cls, height: int, width: int, size: int, spacing_mm: Any = None) -> "ViewGeometry":
        s = size / max(height, width)
        nh, nw = max(1, min(size, int(round(height * s)))), max(1, min(size, int(round(width * s))))
        spacing = None
        if spacing_mm is not None:
            try:
                row, col = (float(v) for v in spacing_mm)
                spacing = (row, col) if row > 0 and col > 0 else None
            except (TypeError, ValueError):
                spacing = None
        return cls(height, width, nw / width, nh / height, (size - nw) // 2, (size - nh) // 2, size, spacing)

    @property
    def inner(self) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the image inside the view."""
        return (self.offset_y, self.offset_x, int(round(self.height * self.scale_y)),
                int(round(self.width * self.scale_x)))

    def to_view(self, xy: np.ndarray) -> np.ndarray:
        """Points ``[..., 2]`` (x, y) in original pixels -> view pixels."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 0] + 0.5) * self.scale_x + self.offset_x - 0.5,
                         (xy[..., 1] + 0.5) * self.scale_y + self.offset_y - 0.5], axis=-1)

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_view`."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 0] + 0.5 - self.offset_x) / self.scale_x - 0.5,
                         (xy[..., 1] + 0.5 - self.offset_y) / self.scale_y - 0.5], axis=-1)

    def box_to_view(self, box: Sequence[float]) -> np.ndarray:
        """A box ``(x0, y0, x1, y1)`` given by pixel edges (not centres) -> view edges."""
        x0, y0, x1, y1 = box
        return np.array([x0 * self.scale_x + self.offset_x, y0 * self.scale_y + self.offset_y,
                         x1 * self.scale_x + self.offset_x, y1 * self.scale_y + self.offset_y])

    def box_to_original(self, box: np.ndarray) -> np.ndarray:
        b = np.asarray(box, dtype=np.float64)
        return np.array([(b[0] - self.offset_x) / self.scale_x, (b[1] - self.offset_y) / self.scale_y,
                         (b[2] - self.offset_x) / self.scale_x, (b[3] - self.offset_y) / self.scale_y])

    def valid_mask(self) -> np.ndarray:
        """bool ``[size, size]``: True on image pixels, False on padding."""
        top, left, h, w = self.inner
        m = np.zeros((self.size, self.size), dtype=bool)
        m[top:top + h, left:left + w] = True
        return m


def letterbox(pixels: np.ndarray, size: int) -> tuple[torch.Tensor, ViewGeometry]:
    """``[H, W]`` in [0, 1] -> ``[1, size, size]`` float32 (not normalised) and its geometry."""
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32))
    if x.ndim != 2 or min(x.shape) < 2:
        raise ValueError(f"expected a 2-D image of at least 2x2 pixels, got shape {tuple(x.shape)}")
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
    geo = ViewGeometry.letterbox(x.shape[0], x.shape[1], size)
    top, left, h, w = geo.inner
    small = F.interpolate(x[None, None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    out = torch.zeros(1, size, size)
    out[:, top:top + h, left:left + w] = small.clamp_(0.0, 1.0)
    return out, geo


@dataclass
class EvalSet:
    """The decodable records of one dataset, their evaluation views and train / test assignment.

    Attributes
    ----------
    records : list of SiteRecord
    views : Tensor [N, 1, S, S] float16 in [0, 1] (normalised at the forward pass)
    geometry : list of ViewGeometry, one per record
    split : list of "train" | "test"
    skipped : list of (record, reason), images that failed to decode
    seed : int
        Seed of every head initialisation and batch order (same for every backbone).
    """

    records: list[Any]
    views: torch.Tensor
    geometry: list[ViewGeometry]
    split: list[str]
    skipped: list[tuple[Any, str]] = field(default_factory=list)
    seed: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def rows(self, part: str) -> list[int]:
        return [i for i, s in enumerate(self.split) if s == part]

    @property
    def size(self) -> int:
        return int(self.views.shape[-1])


def assign_split(records: Sequence[Any], seed: int, fraction: float = 0.2) -> list[str]:
    """"test" for ``split == test`` rows and "train" for the rest; without any test row, a seeded hold-out
    of ``fraction`` of the patients (one patient's images stay on one side)."""
    from xr0_core.data.splits import holdout_split

    if any(getattr(r, "split", None) == TEST for r in records):
        return [TEST if r.split == TEST else TRAIN for r in records]
    _, test = holdout_split(list(records), seed, fraction)
    held = {id(r) for r in test}
    return [TEST if id(r) in held else TRAIN for r in records]


# From this many images on, the default reader decodes in worker processes: a spawned worker costs seconds of
# start-up (it imports torch), one image tens of milliseconds, and a hospital may evaluate 100k+ images.
PARALLEL_DECODE_MIN = 2000


def _decode_view(path: Any, size: int, reader: Callable[[Any], Any] | None = None
                 ) -> tuple[torch.Tensor, int, int, Any] | str:
    """One record's letterbox view ``[1, size, size]`` float16 with ``(height, width, pixel spacing)``, or the
    reason it cannot be read (module-level: it runs in worker processes)."""
    if reader is None:
        from xr0_core.data.images import read_image

        reader = read_image
    try:
        img = reader(path)
        view, geo = letterbox(img.pixels, size)
    except Exception as exc:  # noqa: BLE001 -- one bad file must not stop an evaluation (D7)
        return f"{type(exc).__name__}: {exc}"
    meta = getattr(img, "meta", None) or {}
    return view.to(torch.float16), geo.height, geo.width, meta.get("pixel_spacing_mm")


def _init_decode_worker() -> None:
    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def _decode_views(paths: list[Any], size: int, reader: Callable[[Any], Any] | None, workers: int) -> list:
    """:func:`_decode_view` of every path, in order; in ``workers`` spawned processes when > 1."""
    if workers <= 1:
        return [_decode_view(p, size, reader) for p in paths]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: the caller may hold torch / OpenMP threads (or be a Ray actor) a forked child inherits
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_decode_worker) as pool:
            chunk = max(1, min(32, len(paths) // (8 * workers)))
            return list(pool.map(partial(_decode_view, size=size, reader=reader), paths, chunksize=chunk))
    except (BrokenProcessPool, OSError) as exc:
        # A worker that cannot start (e.g. a __main__ spawn cannot re-import, such as a script read from stdin,
        # or no process slots left) must not cost the evaluation: decode here instead, slower but complete.
        log.warning("evaluation decodes in one process: worker processes failed (%s)", exc)
        return [_decode_view(p, size, reader) for p in paths]


def decode_workers(n_images: int, reader: Callable[[Any], Any] | None) -> int:
    """Worker processes for decoding ``n_images`` evaluation images: the usable cores for the default reader
    on large sets (at most 8), else 1 (a custom reader may be a closure over this process's state)."""
    import os

    if reader is not None or n_images < PARALLEL_DECODE_MIN:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def build_eval_set(records: Sequence[Any], size: int, seed: int,
                   reader: Callable[[Any], Any] | None = None, workers: int | None = None) -> EvalSet:
    """Decode every record once into its letterbox view; undecodable files are skipped with the reason.

    ``workers``: decoding processes (default :func:`decode_workers`: several cores for the default reader on
    sets of :data:`PARALLEL_DECODE_MIN` images or more). The result does not depend on it.
    """
    records = list(records)
    workers = decode_workers(len(records), reader) if workers is None else workers
    decoded = _decode_views([r.path for r in records], size, reader, workers)
    kept, views, geos, skipped = [], [], [], []
    for rec, out in zip(records, decoded):
        if isinstance(out, str):
            skipped.append((rec, out))
            log.warning("evaluation skips %s: %s", getattr(rec, "path", rec), out)
            continue
        view, height, width, spacing = out
        geos.append(ViewGeometry.letterbox(height, width, size, spacing))
        views.append(view)
        kept.append(rec)
    tensor = torch.stack(views) if views else torch.zeros(0, 1, size, size, dtype=torch.float16)
    return EvalSet(kept, tensor, geos, assign_split(kept, seed), skipped, seed)


@dataclass
class Features:
    """Frozen features of one backbone on an :class:`EvalSet`.

    Attributes
    ----------
    cls : Tensor [N, D] float32, CLS token after the final norm (not normalised)
    patches : Tensor [N, g*g, D] float16 or None (only when a dense task needs them)
    grid : int, patches per side
    readout : Tensor [N, R] float32 or None: what the linear probes read (``eval.readout``,
        :mod:`xr0_core.eval.readouts`); None means the CLS token
    """

    cls: torch.Tensor
    patches: torch.Tensor | None
    grid: int
    memo: dict = field(default_factory=dict)  # results two tasks share (e.g. one trained projection pair)
    readout: torch.Tensor | None = None

    @property
    def probe_input(self) -> torch.Tensor:
        """What a linear probe reads: the readout, or the CLS token when no other readout was extracted."""
        return self.cls if self.readout is None else self.readout

    @property
    def dim(self) -> int:
        return int(self.cls.shape[1])


def extract(backbone: nn.Module, data: EvalSet, *, patches: bool, batch_size: int = 32,
            device: torch.device | str = "cpu", precision: str = "auto", readout: str = "cls") -> Features:
    """Run the frozen backbone once over every view (:func:`xr0_core.models.features.frozen_features`): CLS
    tokens, float16 patch tokens when a dense task needs them, and the probes' ``readout``
    (:mod:`xr0_core.eval.readouts`; pooled per batch, so a spatial readout never needs every token in memory)."""
    from xr0_core.data.transforms import normalize
    from xr0_core.eval.readouts import assemble, check_readout, needs_patches, pool_patches
    from xr0_core.models.features import frozen_features

    pooled_only = needs_patches(check_readout(readout)) and not patches
    keep = (lambda t: t.to(torch.float16)) if patches else (lambda t: pool_patches(t, readout)) if pooled_only else None
    cls, pat = frozen_features(backbone, len(data), lambda a, b: normalize(data.views[a:b].float()),
                               batch_size=batch_size, device=device, precision=precision, patches=keep)
    dim = int(getattr(backbone, "embed_dim", 0))
    probe = None
    if pooled_only:
        probe, pat = assemble(cls, pat, readout), None
    elif readout != "cls" and pat is not None and len(pat):
        probe = torch.cat([assemble(cls[a:a + 256], pool_patches(pat[a:a + 256], readout), readout)
                           for a in range(0, len(pat), 256)])
    if patches and pat is None:
        pat = torch.zeros(0, 0, dim, dtype=torch.float16)
    grid = int(round(pat.shape[1] ** 0.5)) if pat is not None and len(pat) else 0  # dense tasks only
    return Features(cls, pat, grid, readout=probe)


@dataclass
class TaskOutput:
    """Metrics of one task for one backbone, the number of test examples scored, qualitative examples.

    ``per_row`` holds, for the metrics that are a mean over scored units (a test image, a query, a phrase),
    the value of every unit ``[U]``, and ``rows`` the :class:`EvalSet` row of each unit ``[U]`` (whose patient
    is the bootstrap's resampling unit). The suite pairs the FIRST of them between backbones for the interval
    of the difference that leaves as ``<task>/ci/...``; they never leave the hospital themselves.
    """

    metrics: dict[str, float]
    n_test: int
    examples: list[dict] = field(default_factory=list)
    per_row: dict[str, np.ndarray] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class HeadBudget:
    """How much a light head may train: optimizer steps, learning rate, batch size."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 32


def seeded(seed: int, *parts: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *parts))
    return g


def init_head(make: Callable[[], nn.Module], seed: int, *parts: object) -> nn.Module:
    """Build a head with torch seeded from ``(seed, *parts)`` without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "head", *parts))
        return make()


def train_head(head: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int, budget: HeadBudget,
               generator: torch.Generator) -> nn.Module:
    """AdamW on ``loss_fn(batch_indices)`` for ``budget.steps`` steps of ``budget.batch_size`` rows
    drawn from ``range(n)`` with ``generator``; cosine learning-rate decay. Returns ``head`` in eval mode."""
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=budget.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, budget.steps))
    bs = min(budget.batch_size, n)
    for _ in range(budget.steps):
        idx = torch.randperm(n, generator=generator)[:bs]
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def patch_map(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """Patch tokens ``[B, g*g, D]`` -> feature map ``[B, D, g, g]`` float32."""
    b, n, d = patches.shape
    return patches.float().transpose(1, 2).reshape(b, d, grid, grid)


class PatchDecoder(nn.Module):
    """A light convolutional decoder on patch tokens: ``[B, g*g, D] -> [B, C, S, S]`` logits.

    1x1 projection to ``width`` channels, two 3x3 conv blocks at 2x and 4x the patch grid, bilinear
    upsampling to the view side ``S``. About 40 k parameters for ViT-B: a probe of the tokens, not a U-Net.
    """

    def __init__(self, dim: int, out_channels: int, grid: int, size: int, width: int = 32) -> None:
        super().__init__()
        self.grid, self.size = grid, size
        self.proj = nn.Sequential(nn.Conv2d(dim, width, 1), nn.GroupNorm(8, width), nn.GELU())
        self.up1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.GELU())
        self.up2 = nn.Sequential(nn.Conv2d(width, width // 2, 3, padding=1), nn.GroupNorm(8, width // 2), nn.GELU())
        self.out = nn.Conv2d(width // 2, out_channels, 1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.proj(patch_map(patches, self.grid))
        x = self.up1(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.up2(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return F.interpolate(self.out(x), size=(self.size, self.size), mode="bilinear", align_corners=False)


@dataclass
class TaskContext:
    """What a task may use besides the data and features: budget, seed, device and the text tower."""

    budget: HeadBudget
    seed: int
    knn_k: int = 10
    landmark_radius_px: float = 10.0
    landmark_radius_mm: float = 4.0
    text: Any = None  # TextCache or None
    examples: int = 0  # qualitative examples to keep (local evaluation only)
    probe_c: float | str = "auto"  # linear probes' L2 inverse strength ("auto": chosen by CV by patient)


class TextCache:
    """Frozen text-tower outputs per distinct string, computed once per evaluation and shared by every
    backbone (the text side does not depend on the image backbone)."""

    def __init__(self, tower: Any) -> None:
        self.tower = tower
        self._emb: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return int(self.tower.dim)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings ``[B, dim]`` of ``texts``."""
        missing = sorted({t for t in texts if t not in self._emb})
        if missing:
            for t, e in zip(missing, self.tower.embed(missing)):
                self._emb[t] = e
        return torch.stack([self._emb[t] for t in texts]) if texts else torch.zeros(0, self.dim)


def normalise_text(text: str) -> str:
    """Lower case, single spaces: how reports are compared (the default tokenizer is uncased)."""
    return " ".join(str(text).lower().split())
