"""Tiny DP trainers on in-memory images (CPU, seconds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from xr0_core.config import from_flat
from xr0_core.data.dataset import ImageCache

TINY = {"model.backbone": "vit-micro-p8", "model.img-size": 32, "ssl.local-size": 16, "train.load-size": 32,
        "ssl.n-local-crops": 2, "train.batch-size": 4, "model.head-out-dim": 64, "model.ibot-out-dim": 64,
        "model.head-hidden-dim": 64, "model.head-bottleneck-dim": 32, "train.device": "cpu",
        "privacy.enabled": True, "train.local-steps": 2}


@dataclass(frozen=True)
class Rec:
    """Stand-in for a SiteRecord: what privacy units read."""

    path: str
    patient_id: str | None


def tiny_cfg(**over):
    return from_flat({**TINY, **over})


def patient_cache(patients: list[int], seed: int = 0) -> ImageCache:
    """A cache whose image i belongs to patient ``patients[i]``."""
    rng = np.random.default_rng(seed)
    cache = ImageCache.from_arrays([rng.random((36, 40), dtype=np.float32) for _ in patients], 32)
    cache.kept = [Rec(f"img{i}.png", f"p{p}") for i, p in enumerate(patients)]
    return cache


@pytest.fixture
def cache12():
    return patient_cache(list(range(12)))
