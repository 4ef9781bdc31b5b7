"""Checks on one client's reply before it may enter the aggregate.

A reply that fails is dropped with a one-line reason; the round goes on with the others.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .aggregate import global_norm, subtract


def check_update(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    max_update_norm: float = 0.0,
    max_update_ratio: float = 0.0,
) -> str | None:
    """Return ``None`` when ``update`` may be aggregated, else the reason it may not.

    Parameters
    ----------
    update : mapping name -> array
        The client's returned shared parameters.
    reference : mapping name -> array
        The global parameters sent this round (keys, shapes and dtypes to match).
    max_update_norm : float
        Reject when ``||update - reference||_2`` exceeds this; ``0`` disables the bound.
    max_update_ratio : float
        Reject when ``||update - reference||_2`` exceeds this multiple of ``||reference||_2``; ``0`` disables it.
    """
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing or extra:
        return f"parameter keys differ from the global model (missing {missing[:3]}, extra {extra[:3]})"
    for name, ref in reference.items():
        arr = update[name]
        if not isinstance(arr, np.ndarray):
            return f"{name}: not an array"
        if arr.shape != ref.shape:
            return f"{name}: shape {tuple(arr.shape)} != {tuple(ref.shape)}"
        if arr.dtype != ref.dtype:
            return f"{name}: dtype {arr.dtype} != {ref.dtype}"
        if not np.all(np.isfinite(arr)):
            return f"{name}: non-finite values (NaN or inf)"
    if max_update_norm > 0 or max_update_ratio > 0:
        norm = global_norm(subtract(update, reference))
        if max_update_norm > 0 and norm > max_update_norm:
            return f"update norm {norm:.3g} exceeds federation.max-update-norm {max_update_norm:.3g}"
        if max_update_ratio > 0:
            bound = max_update_ratio * global_norm(reference)
            if norm > bound:
                return (f"update norm {norm:.3g} exceeds federation.max-update-ratio {max_update_ratio:g} x the global "
                        f"weights' norm ({bound:.3g})")
    return None
