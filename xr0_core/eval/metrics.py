"""Downstream-task metrics (D8), as pure functions on numpy arrays.

Every function returns plain floats; a value that is undefined on the given data (AUROC with one class in
the test rows, a mean over nothing) is ``nan``, never a made-up number. The evaluation suite drops
``nan`` values before they are reported, so a missing metric means "not measurable here".

Text metrics use libraries that work offline: ``sacrebleu`` (BLEU-4, 13a tokenisation) and ``rouge-score``
(ROUGE-L F-measure); no metric script is loaded from a hub.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# ---------------------------------------------------------------------------------------- classification


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of equal entries; ``pred``, ``target`` int ``[M]``."""
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean()) if len(target) else float("nan")


def paired_bootstrap_ci(correct_a: np.ndarray, correct_b: np.ndarray, groups: Sequence | None = None,
                        n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(correct_a) - mean(correct_b)`` on the same test rows.

    Two models scored on one held-out set are compared *paired*: each resample draws test rows (or whole
    ``groups``, e.g. patients, so images of one patient stay together) with replacement and takes the
    difference on the same draw. With the small held-out sets of one hospital this is what says whether a
    gain of a few images is more than chance.

    Parameters
    ----------
    correct_a, correct_b : array of bool or {0, 1}, [M]
        Per-row correctness of the two models.
    groups : sequence [M], optional
        Resampling unit of each row; default: every row is its own unit.
    n_resamples : int
    level : float
        Coverage of the interval, in (0, 1).
    seed : int

    Returns
    -------
    (low, high) : floats, ``nan`` for an empty test set.
    """
    s = paired_bootstrap(correct_a, correct_b, groups, n_resamples, level, seed)
    return s["low"], s["high"]


def paired_bootstrap(values_a: np.ndarray, values_b: np.ndarray, groups: Sequence | None = None,
                     n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """:func:`paired_bootstrap_ci` for any per-row scores (correctness, Dice, IoU, error), with more detail.

    Parameters
    ----------
    values_a, values_b : float arrays [M], the two models' scores on the same rows
    groups, n_resamples, level, seed : as :func:`paired_bootstrap_ci`

    Returns
    -------
    dict with ``diff`` (mean(a) - mean(b) on all rows), ``low`` / ``high`` (percentile interval), ``se``
    (standard deviation of the resampled differences) and ``units`` (number of groups); ``nan`` values
    and ``units`` 0 for an empty set.
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired score vectors must be 1-D and of one length, got {a.shape} and {b.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    nan = float("nan")
    if a.size == 0:
        return {"diff": nan, "low": nan, "high": nan, "se": nan, "units": 0.0}
    keys = np.arange(a.size) if groups is None else np.unique(np.asarray(list(groups)), return_inverse=True)[1]
    n_groups = int(keys.max()) + 1
    diff_sum = np.bincount(keys, weights=a - b, minlength=n_groups)  # [G]
    count = np.bincount(keys, minlength=n_groups).astype(np.float64)  # [G]
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_resamples, n_groups))  # [R, G]
    diffs = diff_sum[draws].sum(axis=1) / count[draws].sum(axis=1)  # [R]
    tail = (1.0 - level) / 2.0
    return {"diff": float((a - b).mean()), "low": float(np.quantile(diffs, tail)),
            "high": float(np.quantile(diffs, 1.0 - tail)), "se": float(diffs.std(ddof=1)) if n_resamples > 1 else nan,
            "units": float(n_groups)}


def binary_auroc(scores: np.ndarray, target: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (float ``[M]``, higher = positive) for ``target`` in {0, 1}.

    Computed as the Mann-Whitney U statistic with average ranks for ties; ``nan`` when the test rows hold
    only one class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target = np.asarray(target).astype(bool)
    n_pos, n_neg = int(target.sum()), int((~target).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[target].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(probs: np.ndarray, target: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over the classes present in ``target``.

    ``probs`` float ``[M, C]`` (column c = score of class c), ``target`` int ``[M]`` in ``[0, C)``.
    Classes absent from the test rows (or present in every row) have no AUROC and are left out of the mean;
    ``nan`` when no class has one.
    """
    probs, target = np.asarray(probs), np.asarray(target)
    values = [binary_auroc(probs[:, c], target == c) for c in range(probs.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


# ------------------------------------------------------------------------------------------ segmentation


def dice_per_class(pred: np.ndarray, target: np.ndarray, classes: Sequence[int],
                   valid: np.ndarray | None = None) -> dict[int, float]:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)`` of each class on one image.

    Parameters
    ----------
    pred, target : int arrays of the same shape (``[H, W]``)
    classes : the class values to score (usually the foreground classes ``1 .. C-1``)
    valid : bool array like ``pred``, optional
        Pixels that count (False on letterbox padding).

    Returns
    -------
    dict of class -> Dice
        A class absent from both ``pred`` and ``target`` scores 1 (nothing to find, nothing found).
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    if valid is not None:
        pred, target = pred[valid], target[valid]
    out = {}
    for c in classes:
        p, t = pred == c, target == c
        denom = int(p.sum()) + int(t.sum())
        out[int(c)] = 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom
    return out


# --------------------------------------------------------------------------------------- boxes, points


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of paired boxes ``[M, 4]`` as ``(x0, y0, x1, y1)``; ``[M]``."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def radial_errors(pred: np.ndarray, target: np.ndarray, spacing: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance of each predicted point to its target, ``[M, 2] -> [M]``.

    ``spacing`` ``[M, 2]`` as (row, column) mm per pixel turns pixel offsets into mm (x uses the column
    spacing, y the row spacing).
    """
    d = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    if spacing is not None:
        s = np.asarray(spacing, dtype=np.float64)
        d = d * s[:, ::-1]  # (dx, dy) * (col, row)
    return np.sqrt((d ** 2).sum(axis=1))


def success_rate(errors: np.ndarray, radius: float) -> float:
    """Share of points whose radial error is at most ``radius`` (same unit as ``errors``)."""
    errors = np.asarray(errors)
    return float((errors <= radius).mean()) if len(errors) else float("nan")


# ------------------------------------------------------------------------------------------- retrieval


def recall_at_k(similarity: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries with at least one relevant gallery item among their ``k`` most similar.

    Parameters
    ----------
    similarity : float ``[Q, G]``
    relevant : bool ``[Q, G]``
    ks : the cut-offs

    Returns
    -------
    dict k -> Recall@k. Queries without any relevant item are left out (they cannot be answered);
    ``nan`` when none is left. Ties in similarity are broken by gallery order (stable sort).
    """
    similarity, relevant = np.asarray(similarity), np.asarray(relevant, dtype=bool)
    keep = relevant.any(axis=1)
    if not keep.any():
        return {int(k): float("nan") for k in ks}
    order = np.argsort(-similarity[keep], axis=1, kind="stable")
    hits = np.take_along_axis(relevant[keep], order, axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), hits.shape[1])  # rank of the first hit (0-based)
    return {int(k): float((first < k).mean()) for k in ks}


# ------------------------------------------------------------------------------------------------ text


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu, 13a tokenisation, exponential smoothing) in ``[0, 1]`` (sacrebleu / 100).

    One reference per hypothesis.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return float("nan")
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score) / 100.0


def rouge_l_each(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F-measure (``rouge-score``, no stemming) of each hypothesis / reference pair, ``[M]``."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.asarray([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)],
                      dtype=np.float64)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (``rouge-score``, no stemming) over hypothesis / reference pairs."""
    each = rouge_l_each(hypotheses, references)
    return float(each.mean()) if len(each) else float("nan")
