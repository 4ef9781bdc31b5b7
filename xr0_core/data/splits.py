"""Held-out splits that keep a patient on one side (no near-duplicate leaks into evaluation)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from xr0_core.runtime import derive_seed

HOLDOUT_FRACTION = 0.2


def unit_of(record: Any) -> str:
    """Grouping key of a record: patient id, else study id, else the file."""
    return str(getattr(record, "patient_id", None) or getattr(record, "study_id", None) or record.path)


def holdout_split(records: Sequence[Any], seed: int, fraction: float = HOLDOUT_FRACTION) -> tuple[list[Any], list[Any]]:
    """(train, test) records: ``split == "test"`` rows when the manifest has any; otherwise a seeded
    ``fraction`` of patients (:func:`unit_of`), held out whole.
    """
    if any(getattr(r, "split", None) == "test" for r in records):
        return [r for r in records if r.split != "test"], [r for r in records if r.split == "test"]
    units = sorted({unit_of(r) for r in records})
    n_test = max(1, int(round(fraction * len(units)))) if len(units) > 1 else 0
    rng = np.random.default_rng(derive_seed(seed, "holdout"))
    held = {units[i] for i in rng.permutation(len(units))[:n_test]}
    return [r for r in records if unit_of(r) not in held], [r for r in records if unit_of(r) in held]


def unit_held_out(unit: str, key: str, fraction: float = HOLDOUT_FRACTION) -> bool:
    """Whether ``unit`` is held out, from a hash of (``key``, unit) alone.

    Unlike :func:`holdout_split`, whether one patient is held out never depends on which other patients
    exist: adding or removing a patient changes nobody else's side. Differential privacy needs exactly
    that (the training set of the other patients must not change with one patient's presence).
    """
    return derive_seed(key, "dp-holdout", unit) / float(1 << 63) < fraction


def private_partition(records: Sequence[Any], key: str, fraction: float = HOLDOUT_FRACTION) -> tuple[list[Any], list[Any]]:
    """(train, held-out) records under DP, split per patient (:func:`unit_of`): when the site's manifest has
    ``split == "test"`` rows, every patient with at least one such row is held out *whole* (a per-image
    split would put one patient's other images into DP training while the evaluation reads these);
    otherwise each patient is held out by :func:`unit_held_out` with the site's stable ``key``, so the same
    patients stay out of training in every run. Evaluation under DP sees only the held-out side: patients
    never used in training.
    """
    if any(getattr(r, "split", None) == "test" for r in records):
        held = {unit_of(r) for r in records if r.split == "test"}
    else:
        held = {u for u in {unit_of(r) for r in records} if unit_held_out(u, key, fraction)}
    return [r for r in records if unit_of(r) not in held], [r for r in records if unit_of(r) in held]
