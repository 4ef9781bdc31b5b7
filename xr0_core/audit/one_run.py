"""The one-run epsilon audit (Steinke, Nasr & Jagielski, NeurIPS 2023): m canaries, each in the training data by
an independent fair coin; after one training run the auditor guesses the coins of r of them and gets v right.

For an (epsilon, delta)-DP mechanism, the number of correct guesses is (up to the delta term) stochastically
dominated by Binomial(r, e^eps / (1 + e^eps)), whatever the guessing rule, as long as the coins are independent
fair coins the mechanism never sees but through its training data (their Theorem 3.2 and Proposition 5.x, with
the delta term bounded as in their Algorithm 3). :func:`p_value` is the probability of at least v correct guesses
under the hypothesis "(epsilon, delta)-DP"; :func:`epsilon_lower_bound` is the largest epsilon that hypothesis
test rejects at level ``alpha``: with probability at least ``1 - alpha`` the mechanism is not
(eps', delta)-DP for any eps' below it.

Only numpy / scipy (``scipy.stats.binom``); no code of the paper's repository.

References: T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023,
arXiv:2305.08846 (Theorem 3.1 for the pure case; Algorithm 3 for the numerical bound with delta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st


def _check(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m):
        raise ValueError(f"the one-run audit needs 0 <= correct (v={v}) <= guesses (r={r}) <= canaries (m={m})")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P[at least ``v`` of ``r`` guesses correct] under the hypothesis that training is (epsilon, delta)-DP.

    ``beta = P[Binomial(r, q) >= v]`` with ``q = e^eps / (1 + e^eps)`` (the accuracy of epsilon randomized
    response, the best any guesser can do under pure epsilon-DP), plus the delta term
    ``2 m delta max_{1 <= i <= v} P[v - i <= Binomial(r, q) < v] / i`` of the paper's Algorithm 3.
    """
    _check(m, r, v)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"epsilon must be >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(st.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(1.0, beta)
    # P[v - i <= B < v] for i = 1..v, as a cumulative sum of pmf(v - 1), pmf(v - 2), ...
    pmf = st.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, alpha: float = 0.05, *,
                        tol: float = 1e-6) -> float:
    """The largest epsilon whose (epsilon, delta)-DP hypothesis has :func:`p_value` below ``alpha`` (bisection).

    0 when even epsilon = 0 is not rejected (e.g. ``v <= r / 2``).
    """
    _check(m, r, v)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha (1 - confidence) must be in (0, 1), got {alpha}")
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < alpha:  # p_value increases with epsilon
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return math.inf
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class CanaryAudit:
    """What the one-run audit found: ``r`` guesses (``k_plus`` "in", ``k_minus`` "out") on ``m`` canaries,
    ``v`` of them right, and the ``1 - alpha`` lower bound on epsilon at ``delta``."""

    m: int
    r: int
    v: int
    k_plus: int
    k_minus: int
    delta: float
    alpha: float
    epsilon_lower: float

    def to_json(self) -> dict:
        return {"canaries": self.m, "guesses": self.r, "correct": self.v, "guessed_in": self.k_plus,
                "guessed_out": self.k_minus, "delta": self.delta, "confidence": 1 - self.alpha,
                "epsilon_lower": self.epsilon_lower}


def audit_canaries(scores: np.ndarray, included: np.ndarray, delta: float, *, alpha: float = 0.05,
                   guess_fraction: float = 1.0) -> CanaryAudit:
    """Guess the coins from the canaries' scores and bound epsilon.

    Parameters
    ----------
    scores : [m] float
        One score per canary (larger = more likely trained on), computed from the released model only.
    included : [m] bool
        The secret coins (True: the canary was in the training data).
    delta : the site's delta
    guess_fraction : float in (0, 1]
        Share of canaries guessed: the ``k = fraction * m / 2`` highest scores are guessed "in" and the ``k``
        lowest "out", the rest abstain. Fixed before the scores are seen (one test, no search over k: a search
        would need a correction the paper's bound does not include).
    """
    s = np.asarray(scores, dtype=float).ravel()
    coins = np.asarray(included, dtype=bool).ravel()
    if s.shape != coins.shape or s.size == 0:
        raise ValueError(f"need one score per canary: {s.size} scores for {coins.size} coins")
    if not np.isfinite(s).all():
        raise ValueError("canary scores must be finite")
    if not 0 < guess_fraction <= 1:
        raise ValueError(f"guess_fraction must be in (0, 1], got {guess_fraction}")
    m = s.size
    k = max(1, int(math.floor(guess_fraction * m / 2)))
    # a stable order (ties broken by index) so the guesses depend on the scores only
    order = np.argsort(-s, kind="stable")
    guessed_in, guessed_out = order[:k], order[m - k:] if m - k >= k else order[k:]
    v = int(coins[guessed_in].sum() + (~coins[guessed_out]).sum())
    r = int(guessed_in.size + guessed_out.size)
    return CanaryAudit(m, r, v, int(guessed_in.size), int(guessed_out.size), float(delta), float(alpha),
                       epsilon_lower_bound(m, r, v, delta, alpha))
