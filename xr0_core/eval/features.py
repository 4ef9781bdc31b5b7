"""Frozen-backbone features of an image source for evaluation (D8): CLS token after the final norm,
L2-normalised, of each cached image resized whole (the loop itself: :func:`xr0_core.models.features.frozen_features`,
which the task suite's letterbox views and the SSL health probe also use)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.data.dataset import ImageCache
from xr0_core.data.views import center_view
from xr0_core.models.features import frozen_features


@torch.no_grad()
def extract_features(backbone: nn.Module, cache_or_records: ImageCache | Sequence[Any], img_size: int,
                     batch_size: int = 64, device: torch.device | str = "cpu", *, load_size: int | None = None,
                     precision: str = "auto") -> torch.Tensor:
    """CLS features of every cached image's centre view.

    Parameters
    ----------
    backbone : timm ViT (``forward_features -> [B, 1 + N, D]``)
    cache_or_records : ImageCache or sequence of records
        Records are decoded into an :class:`ImageCache` of ``load_size`` (default ``img_size``); images that
        fail to decode are skipped, so pass a cache when rows must line up with labels (use ``cache.kept``).
    img_size : int
        Side of the evaluation view.
    batch_size : int
    device : torch.device or str

    Returns
    -------
    Tensor [N, D]
        float32 CPU, unit L2 norm per row.
    """
    device = torch.device(device)
    # Any image source (in-RAM ImageCache or prepared shards, xr0_core/data/source.py) has ``kept``.
    cache = cache_or_records if hasattr(cache_or_records, "kept") else \
        ImageCache(list(cache_or_records), load_size or img_size, progress=True)
    cls, _ = frozen_features(backbone, len(cache),
                             lambda a, b: torch.stack([center_view(cache[i], img_size) for i in range(a, b)]),
                             batch_size=batch_size, device=device, precision=precision)
    return F.normalize(cls, dim=-1)
