"""The one-run bound (xr0_core/audit/one_run.py) against figures derived from Steinke, Nasr & Jagielski (2023)
and against a simulation of the mechanism their Theorem 3.1 says is the worst case (randomized response)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xr0_core.audit.one_run import audit_canaries, epsilon_lower_bound, p_value


def _tail(r: int, v: int, q: float) -> float:
    """P[Binomial(r, q) >= v] by exact summation (math.comb), independent of scipy."""
    return sum(math.comb(r, k) * q ** k * (1 - q) ** (r - k) for k in range(v, r + 1))


def test_pure_dp_perfect_guesses_match_the_closed_form_of_theorem_3_1():
    # Derived figure: under pure eps-DP the correct guesses are dominated by Binomial(r, e^eps / (1 + e^eps))
    # (Theorem 3.1), so r guesses all right reject eps exactly when q^r < alpha: the bound is log(q / (1 - q))
    # with q = alpha^(1 / r). At r = 100, alpha = 0.05: q = 0.970487..., eps = 3.4925...
    for r in (10, 100, 1000):
        q = 0.05 ** (1 / r)
        expected = math.log(q / (1 - q))
        assert epsilon_lower_bound(r, r, r, 0.0, 0.05) == pytest.approx(expected, abs=1e-4)
    assert epsilon_lower_bound(100, 100, 100, 0.0, 0.05) == pytest.approx(3.4925, abs=1e-3)


def test_the_p_value_is_the_binomial_tail_plus_the_delta_term():
    m, r, v, eps, delta = 1000, 200, 150, 0.7, 1e-5
    q = 1 / (1 + math.exp(-eps))
    beta = _tail(r, v, q)
    assert p_value(m, r, v, eps, 0.0) == pytest.approx(beta, rel=1e-9)
    # the delta term: 2 m delta max_i P[v - i <= B < v] / i, summed by hand
    pmf = [math.comb(r, k) * q ** k * (1 - q) ** (r - k) for k in range(r + 1)]
    term = max(sum(pmf[v - i: v]) / i for i in range(1, v + 1))
    assert p_value(m, r, v, eps, delta) == pytest.approx(beta + 2 * m * delta * term, rel=1e-9)


def test_delta_lowers_the_bound_and_half_right_gives_nothing():
    # With delta the hypothesis is weaker, so fewer epsilons are rejected.
    pure = epsilon_lower_bound(1000, 1000, 900, 0.0)
    with_delta = epsilon_lower_bound(1000, 1000, 900, 1e-5)
    assert 0 < with_delta < pure
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0  # coin flipping rejects nothing
    with pytest.raises(ValueError, match="guesses"):
        epsilon_lower_bound(10, 20, 5)


def test_on_eps_1_randomized_response_the_bound_exceeds_1_at_most_5_percent_of_the_time():
    # Each canary's coin is released through eps = 1 randomized response (the worst case of pure 1-DP): a valid
    # 95 % lower bound may exceed 1 in at most 5 % of audits. 400 seeded audits of 200 canaries each.
    rng = np.random.default_rng(0)
    eps, m, trials, above = 1.0, 200, 400, 0
    keep = 1 / (1 + math.exp(-eps))
    bounds = []
    for _ in range(trials):
        coins = rng.random(m) < 0.5
        said = np.where(rng.random(m) < keep, coins, ~coins)
        scores = said + 1e-3 * rng.random(m)  # "in" answers score higher
        b = audit_canaries(scores, coins, 0.0).epsilon_lower
        bounds.append(b)
        above += b > eps
    assert above / trials <= 0.05
    assert np.median(bounds) > 0.5  # and it is not vacuous: the audit sees most of the leak


def test_a_leaky_mechanism_is_caught():
    rng = np.random.default_rng(1)
    coins = rng.random(100) < 0.5
    scores = coins + 0.01 * rng.random(100)  # the model tells every coin
    audit = audit_canaries(scores, coins, 1e-5)
    # k+ = k- = 50: every guess is right except those the coins' imbalance forces
    assert audit.r == 100 and audit.v == 100 - abs(int(coins.sum()) - 50) and audit.epsilon_lower > 2
    partial = audit_canaries(scores, coins, 1e-5, guess_fraction=0.5)
    # abstaining on the middle half avoids the forced errors: every guess right, a higher bound
    assert partial.r == partial.v == 50 and partial.epsilon_lower > audit.epsilon_lower
