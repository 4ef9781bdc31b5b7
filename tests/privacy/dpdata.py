"""Tiny DP trainers' data and configuration on in-memory images (CPU, seconds); shared by the privacy and site
tests and the torchrun workers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xr0_core.data.dataset import ImageCache

from tests import tiny

DP = {"privacy.enabled": True, "train.local-steps": 2}


@dataclass(frozen=True)
class Rec:
    """Stand-in for a SiteRecord: what privacy units read."""

    path: str
    patient_id: str | None


def dp_cfg(**over):
    """The tiny configuration (tests/tiny.py) with sample-level DP on and 2 local steps."""
    return tiny.tiny_cfg(**{**DP, **over})


def patient_cache(patients: list[int], seed: int = 0) -> ImageCache:
    """A cache whose image i belongs to patient ``patients[i]``."""
    rng = np.random.default_rng(seed)
    cache = ImageCache.from_arrays([rng.random((36, 40), dtype=np.float32) for _ in patients], 32)
    cache.kept = [Rec(f"img{i}.png", f"p{p}") for i, p in enumerate(patients)]
    return cache
