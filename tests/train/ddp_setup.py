"""The data-parallel equivalence setup shared by tests/train/test_distributed.py and its torchrun worker."""

from __future__ import annotations

import numpy as np

from xr0_core.data.dataset import ImageCache

from tests.tiny import PER_SAMPLE, SMALLER, tiny_cfg

STEPS = 3
# Float sums run in another order across ranks (mean of two half-batch means vs one mean): agreement to
# rounding, amplified a little by three AdamW steps.
ATOL, RTOL = 2e-5, 1e-4


def config():
    # The per-sample objective (no Sinkhorn / EMA centering / KoLeo, no drop-path): see distributed.py.
    return tiny_cfg(**SMALLER, **PER_SAMPLE)


def images() -> ImageCache:
    rng = np.random.default_rng(0)
    return ImageCache.from_arrays([rng.random((20, 20), dtype=np.float32) for _ in range(8)], 16)
