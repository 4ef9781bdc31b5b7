"""Offline LiRA calibration: a patient's score on the audited model against its scores on reference models that
were trained *without* that patient.

Raw scores mix membership with how easy a patient's images are for any model (a high-contrast knee is
consistent under augmentation whether or not it was trained on). Reference models trained with the same
recipe on data that excludes the patient give the patient's own "out" distribution; the calibrated score is
how far the audited model's score lies above it, in units of its spread:

    z_p = (s_p - mean_out_p) / sd_out

``sd_out`` is the pooled spread of every patient's out scores around its own mean (the "fixed variance"
variant of offline LiRA, stable with a handful of references; with a single reference, the spread of all
out scores); a patient that every reference trained on falls back to the mean over all out scores.

References: Carlini et al., "Membership Inference Attacks From First Principles" (IEEE S&P 2022), offline
LiRA with fixed variance (their Section VI.C).
"""

from __future__ import annotations

import numpy as np


def offline_lira(target: np.ndarray, references: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Calibrated scores (larger = more likely a member).

    Parameters
    ----------
    target : [P] the audited model's score of each patient
    references : [R, P] each reference model's score of each patient
    out : [R, P] bool, True where the patient was *not* in that reference model's training data

    Returns
    -------
    [P] float
    """
    t = np.asarray(target, dtype=float)
    ref = np.asarray(references, dtype=float)
    mask = np.asarray(out, dtype=bool)
    if ref.ndim != 2 or ref.shape != mask.shape or ref.shape[1] != t.size:
        raise ValueError(f"references {ref.shape} and out {mask.shape} must both be [R, P] with P = {t.size}")
    if not mask.any():
        raise ValueError("no reference model excludes any audited patient: train references without them")
    counts = mask.sum(0)
    pooled_mean = float(ref[mask].mean())
    sums = np.where(mask, ref, 0.0).sum(0)
    mean = np.where(counts >= 1, sums / np.maximum(counts, 1), pooled_mean)
    own = mask & (counts >= 2)[None]  # spread around a patient's own mean, where it has one
    if own.any():
        dof = max(1, int(own.sum()) - int((counts >= 2).sum()))
        sd = float(np.sqrt((np.where(own, ref - mean[None], 0.0) ** 2).sum() / dof))
    else:
        sd = float(np.std(ref[mask]))
    if not np.isfinite(sd) or sd <= 0:
        sd = 1.0
    return (t - mean) / sd
