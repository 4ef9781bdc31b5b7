"""Synthetic image-report pairs for the mXR-0 tests (in memory: five patterns, each named by its report)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xr0_core.data.dataset import ImageCache


@dataclass(frozen=True)
class Rec:
    path: str
    patient_id: str | None
    report: str | None = None
    split: str | None = None


FINDINGS = ("a nodule in the left lung", "a fracture of the right wrist", "a pleural effusion on the right",
            "a hip implant", "no acute abnormality")


def paired_cache(n: int, *, seed: int = 0, with_reports: bool = True, patients: list[int] | None = None) -> ImageCache:
    """Images whose content is one of five patterns, with the report naming the pattern (synthetic pairs)."""
    rng = np.random.default_rng(seed)
    arrays, recs = [], []
    for i in range(n):
        k = i % len(FINDINGS)
        img = rng.random((36, 36), dtype=np.float32) * 0.2
        img[:, k * 7:(k + 1) * 7] += 0.8  # a bright vertical band whose position is the "finding"
        arrays.append(np.clip(img, 0, 1))
        report = f"FINDINGS: There is {FINDINGS[k]}.\nIMPRESSION: {FINDINGS[k]}." if with_reports else None
        pid = f"p{patients[i] if patients else i}"
        recs.append(Rec(f"img{i}.png", pid, report, "train"))
    cache = ImageCache.from_arrays(arrays, 32)
    cache.kept = recs
    return cache
