"""The linear probe of the evaluation suite and the benches: standardised features, L2 logistic regression,
its regularisation chosen by cross-validation by patient inside the training rows.

Why choose ``C``: a fixed ``C = 0.5`` under-regularises wide readouts. On knee-oa-dev's 64 px raw pixels
(4,096 features) it scores label_oa AUROC 0.706; with ``C`` chosen inside the train split, 0.789 (the raw-pixel
bar a backbone has to beat is that one, docs/ablations.md). Every feature set gets the same choice procedure,
so no one of them is favoured by a hand-picked constant.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

C_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # decades; the winner is refined at x/3 and x*3
FIXED_C = 0.5  # the probe's constant before C was chosen (``eval.probe-c = 0.5`` reproduces old numbers)


def fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, n_classes: int, seed: int,
                c: float = FIXED_C) -> np.ndarray:
    """Class probabilities ``[M, C]`` of an L2 logistic regression with inverse strength ``c`` on features
    standardised with the training rows' mean and sd (the objective of scikit-learn's
    ``LogisticRegression(C=c)``: ``c * sum(log-loss) + ||w||^2 / 2``, intercept not penalised), minimised by
    L-BFGS in torch (float32 products, float64 statistics). More than two classes: one such probe per class
    against the rest (scikit-learn's ``OneVsRestClassifier``), scores normalised to sum to 1.

    Why not scikit-learn itself: its lbfgs took about 12 CPU-s per fit on 2,700 knees x 3,264 readout
    features on the development machine, and choosing C fits 12-18 times per feature set; here the
    matrix products run in torch's threads (``tests/eval/test_readouts.py`` checks both give the same
    probabilities).

    Shapes: ``x_tr [N, D]``, ``y_tr [N]`` ints in ``0..n_classes-1``, ``x_te [M, D]``. ``seed`` is unused
    (the problem is convex and solved from zero); kept so callers name their seed.
    """
    import torch

    x_tr = np.asarray(x_tr, np.float64)
    mean, sd = x_tr.mean(0), x_tr.std(0)
    sd[sd == 0] = 1.0  # as StandardScaler: a constant feature stays zero
    xt = torch.from_numpy(((x_tr - mean) / sd).astype(np.float32))
    xe = torch.from_numpy(((np.asarray(x_te, np.float64) - mean) / sd).astype(np.float32))
    present = np.unique(y_tr)
    probs = np.zeros((len(xe), n_classes))
    if len(present) < 2:
        probs[:, present[0]] = 1.0
        return probs
    if len(present) == 2:
        probs[:, present[1]] = _binary_fit_predict(xt, torch.from_numpy((y_tr == present[1]).astype(np.float32)),
                                                   xe, float(c))
        probs[:, present[0]] = 1.0 - probs[:, present[1]]
        return probs
    # More classes: one binary probe per class against the rest (what macro one-vs-rest AUROC scores), the
    # scores normalised to sum to 1. Multinomial L-BFGS converged 10-40x slower here (5 KL grades).
    for cls_ in present:
        probs[:, cls_] = _binary_fit_predict(xt, torch.from_numpy((y_tr == cls_).astype(np.float32)), xe, float(c))
    probs[:, present] /= probs[:, present].sum(1, keepdims=True).clip(1e-12)
    return probs


def _binary_fit_predict(xt, yt, xe, c: float) -> np.ndarray:
    """P(y = 1) ``[M]`` of one L2 logistic regression: ``c * sum(log-loss) + ||w||^2 / 2``, intercept free.
    ``xt [N, D]`` and ``xe [M, D]`` standardised float32 tensors, ``yt [N]`` in {0, 1}."""
    import torch

    w = torch.zeros(xt.shape[1], dtype=torch.float32, requires_grad=True)
    b = torch.zeros((), dtype=torch.float32, requires_grad=True)
    n = len(yt)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=1000, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        data = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, reduction="sum")
        loss = (data + 0.5 * (w * w).sum() / c) / n  # sklearn's objective / (c n): the same optimum
        loss.backward()
        return loss

    opt.step(objective)
    with torch.no_grad():
        return torch.sigmoid(xe @ w + b).numpy().astype(np.float64)


def _score(probs: np.ndarray, y: np.ndarray) -> float:
    """AUROC (binary) or macro one-vs-rest AUROC over the classes present (``nan`` when undefined)."""
    from xr0_core.eval import metrics

    if probs.shape[1] == 2:
        return metrics.binary_auroc(probs[:, 1], y)
    return metrics.macro_auroc(probs, y)


def choose_c(x: np.ndarray, y: np.ndarray, groups: Sequence[str], n_classes: int, seed: int, folds: int = 3,
             grid: Sequence[float] = C_GRID, refine: bool = True) -> float:
    """The ``C`` of :data:`C_GRID` (then refined at a third and three times the best) with the highest mean
    held-out AUROC over ``folds`` folds split by patient (``StratifiedGroupKFold``: a patient's images never
    straddle fit and held-out rows) inside the given rows only.

    Shapes: ``x [N, D]``, ``y [N]`` ints, ``groups [N]`` patient ids. Falls back to :data:`FIXED_C` when there
    are too few patients or classes for ``folds`` folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    g = np.asarray(groups)
    counts = np.bincount(y, minlength=n_classes)
    if len(set(g.tolist())) < 2 * folds or (counts[counts > 0] < folds).any() or (counts > 0).sum() < 2:
        return FIXED_C
    splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed % 2**32).split(x, y, g))
    seen: dict[float, float] = {}

    def cv(c: float) -> float:
        if c not in seen:
            vals = [_score(fit_predict(x[fit], y[fit], x[held], n_classes, seed, c), y[held]) for fit, held in splits]
            vals = [v for v in vals if np.isfinite(v)]
            seen[c] = float(np.mean(vals)) if vals else -np.inf
        return seen[c]

    best = max(grid, key=cv)
    for c in (best / 3, best * 3) if refine else ():
        cv(c)
    return max(seen, key=lambda c: (seen[c], -abs(np.log10(c))))  # ties: the less extreme C


def probe(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, n_classes: int, seed: int,
          c: float | str = "auto", groups: Sequence[str] | None = None) -> tuple[np.ndarray, float]:
    """Probabilities ``[M, C]`` on ``x_te`` and the ``C`` used: ``c = "auto"`` chooses it with
    :func:`choose_c` on the training rows (``groups``: their patient ids; each row its own when None)."""
    if c == "auto":
        groups = [str(i) for i in range(len(y_tr))] if groups is None else groups
        c = choose_c(x_tr, y_tr, groups, n_classes, seed)
    return fit_predict(x_tr, y_tr, x_te, n_classes, seed, float(c)), float(c)
