"""Membership-inference statistics with exact intervals: AUROC, TPR at a low FPR, Clopper-Pearson intervals, and
the lower bound on epsilon that a membership test implies at the site's delta.

Every function takes per-unit scores (one per patient; larger = "member") and boolean membership labels.

References: Clopper & Pearson (1934) for the exact binomial interval; Kairouz, Oh & Viswanath (2015) and
Jagielski, Ullman & Oprea (2020) for epsilon from a test's (TPR, FPR); Carlini et al. (2022, "Membership
inference attacks from first principles") for reporting TPR at low FPR on log axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

FPR_LEVELS = (0.001, 0.01, 0.1)  # the operating points an audit reports (0.1 %, 1 %, 10 % FPR)


def _check(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float).ravel()
    m = np.asarray(members, dtype=bool).ravel()
    if s.shape != m.shape:
        raise ValueError(f"scores ({s.shape[0]}) and membership labels ({m.shape[0]}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError("membership scores must be finite (drop units without a score first)")
    if m.all() or not m.any():
        raise ValueError(f"a membership audit needs members and non-members, got {int(m.sum())} members and "
                         f"{int((~m).sum())} non-members")
    return s, m


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` interval of a binomial proportion ``k / n``.

    Returns ``(low, high)``; ``(0, 1)`` when ``n == 0``.
    """
    if not 0 <= k <= n:
        raise ValueError(f"Clopper-Pearson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    low = 0.0 if k == 0 else float(st.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(st.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def auroc(scores: np.ndarray, members: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counted one half (Mann-Whitney)."""
    s, m = _check(scores, members)
    ranks = st.rankdata(s)
    n1, n0 = int(m.sum()), int((~m).sum())
    return float((ranks[m].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auroc_interval(scores: np.ndarray, members: np.ndarray, *, alpha: float = 0.05, draws: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` interval of :func:`auroc`, members and non-members resampled separately
    (each row is one patient, the unit of the audit)."""
    s, m = _check(scores, members)
    rng = np.random.default_rng(seed)
    pos, neg = s[m], s[~m]
    out = np.empty(draws)
    for i in range(draws):
        a, b = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        both = np.concatenate([a, b])
        ranks = st.rankdata(both)
        out[i] = (ranks[: a.size].sum() - a.size * (a.size + 1) / 2) / (a.size * b.size)
    return float(np.quantile(out, alpha / 2)), float(np.quantile(out, 1 - alpha / 2))


def roc_curve(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``: guess "member" when ``score > threshold``; from (0, 0) to (1, 1)."""
    s, m = _check(scores, members)
    thr = np.concatenate([[np.inf], np.unique(s)[::-1], [-np.inf]])
    # strictly greater than each threshold; the last (-inf) takes everyone, the first nobody
    tpr = np.array([(s[m] > t).mean() for t in thr[1:]])
    fpr = np.array([(s[~m] > t).mean() for t in thr[1:]])
    tpr = np.concatenate([[0.0], tpr])
    fpr = np.concatenate([[0.0], fpr])
    return fpr, tpr, thr


@dataclass(frozen=True)
class OperatingPoint:
    """The test "member when score > threshold" chosen so that its FPR on the non-members is at most ``target``.

    ``tpr`` / ``fpr`` are the observed rates (``tp`` of ``n_members``, ``fp`` of ``n_nonmembers``) with exact
    95 % Clopper-Pearson intervals. With fewer than ``1 / target`` non-members the only such test is the one
    with no false positive at all (``fpr = 0``), and the interval of ``fpr`` says how little that shows.
    """

    target: float
    threshold: float
    tp: int
    fp: int
    n_members: int
    n_nonmembers: int
    tpr: float
    fpr: float
    tpr_ci: tuple[float, float]
    fpr_ci: tuple[float, float]


def tpr_at_fpr(scores: np.ndarray, members: np.ndarray, target: float, alpha: float = 0.05) -> OperatingPoint:
    """The operating point of largest TPR whose observed FPR is at most ``target`` (see :class:`OperatingPoint`)."""
    s, m = _check(scores, members)
    if not 0 <= target < 1:
        raise ValueError(f"a target FPR must be in [0, 1), got {target}")
    neg = np.sort(s[~m])[::-1]
    allowed = int(math.floor(target * neg.size + 1e-9))  # false positives the target allows
    # "score > threshold" with threshold = the (allowed+1)-th largest non-member score lets exactly `allowed`
    # non-members through (fewer with ties).
    threshold = float(neg[allowed]) if allowed < neg.size else -math.inf
    tp, fp = int((s[m] > threshold).sum()), int((s[~m] > threshold).sum())
    n1, n0 = int(m.sum()), int((~m).sum())
    return OperatingPoint(target, threshold, tp, fp, n1, n0, tp / n1, fp / n0,
                          clopper_pearson(tp, n1, alpha), clopper_pearson(fp, n0, alpha))


def epsilon_from_rates(tpr: float, fpr: float, delta: float) -> float:
    """The smallest epsilon that an (epsilon, delta)-DP mechanism needs for a membership test with these rates.

    (epsilon, delta)-DP bounds every test: ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) + delta``
    (Kairouz et al. 2015), so ``eps >= max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR)))``; 0 when
    neither is positive, ``inf`` when a denominator is 0 and its numerator positive.
    """
    def ratio(num: float, den: float) -> float:
        if num <= 0:
            return 0.0
        if den <= 0:
            return math.inf
        return max(0.0, math.log(num / den))
    return max(ratio(tpr - delta, fpr), ratio(1 - fpr - delta, 1 - tpr))


def epsilon_lower_bound(tp: int, n_members: int, fp: int, n_nonmembers: int, delta: float,
                        alpha: float = 0.05) -> float:
    """A ``1 - alpha`` confidence lower bound on epsilon from one membership test's counts.

    Worst case of :func:`epsilon_from_rates` over the exact one-sided Clopper-Pearson bounds of both rates
    (TPR at its lower, FPR at its upper ``1 - alpha/2`` bound for the first inequality; the mirror for the
    second): with probability at least ``1 - alpha`` the mechanism's epsilon is at least this, provided the
    test's threshold was fixed before these counts were taken (:func:`split_epsilon_lower_bound` does that).
    """
    tpr_lo, _ = clopper_pearson(tp, n_members, alpha)  # one-sided at alpha / 2 each: jointly 1 - alpha
    _, fpr_hi = clopper_pearson(fp, n_nonmembers, alpha)
    # Both inequalities are smallest at (TPR low, FPR high), so the one joint event covers both.
    return epsilon_from_rates(tpr_lo, fpr_hi, delta)


def split_epsilon_lower_bound(scores: np.ndarray, members: np.ndarray, delta: float, *, alpha: float = 0.05,
                              seed: int = 0) -> dict:
    """Epsilon lower bound with a threshold chosen on one half of the units and counted on the other.

    Choosing the threshold on the same units it is counted on would make the interval optimistic (the best of
    many tests); here a seeded half of the members and of the non-members picks the threshold that maximises
    the point estimate of epsilon, and the other half gives the counts for :func:`epsilon_lower_bound`.

    Returns ``{"epsilon_lower", "epsilon_point", "threshold", "tp", "fp", "n_members", "n_nonmembers"}`` of the
    held-out half (``epsilon_point``: :func:`epsilon_from_rates` of its observed rates).
    """
    s, m = _check(scores, members)
    rng = np.random.default_rng(seed)
    pick = np.zeros(s.size, dtype=bool)
    for group in (np.flatnonzero(m), np.flatnonzero(~m)):
        chosen = rng.permutation(group)[: group.size // 2]
        pick[chosen] = True
    hold = ~pick
    if m[hold].all() or not m[hold].any() or m[pick].all() or not m[pick].any():
        return {"epsilon_lower": 0.0, "epsilon_point": 0.0, "threshold": math.nan, "tp": 0, "fp": 0,
                "n_members": int(m[hold].sum()), "n_nonmembers": int((~m[hold]).sum())}
    best, best_t = -1.0, math.inf
    ps, pm = s[pick], m[pick]
    for t in np.unique(ps):
        # thresholds between the selection half's scores: "score > t"
        tpr, fpr = (ps[pm] > t).mean(), (ps[~pm] > t).mean()
        e = epsilon_lower_bound(int((ps[pm] > t).sum()), int(pm.sum()), int((ps[~pm] > t).sum()),
                                int((~pm).sum()), delta, alpha)
        e += 1e-9 * (tpr - fpr)  # ties: prefer the better test
        if e > best:
            best, best_t = e, float(t)
    hs, hm = s[hold], m[hold]
    tp, fp = int((hs[hm] > best_t).sum()), int((hs[~hm] > best_t).sum())
    n1, n0 = int(hm.sum()), int((~hm).sum())
    return {"epsilon_lower": epsilon_lower_bound(tp, n1, fp, n0, delta, alpha),
            "epsilon_point": epsilon_from_rates(tp / n1, fp / n0, delta), "threshold": best_t,
            "tp": tp, "fp": fp, "n_members": n1, "n_nonmembers": n0}
