"""Membership statistics (xr0_core/audit/stats.py): AUROC, exact intervals, TPR at low FPR, epsilon bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xr0_core.audit import stats


def test_auroc_is_the_pairwise_win_rate_with_ties_as_half():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # rounding makes ties
    m = rng.random(60) < 0.4
    pos, neg = s[m], s[~m]
    pairs = [(a > b) + 0.5 * (a == b) for a in pos for b in neg]
    assert stats.auroc(s, m) == pytest.approx(np.mean(pairs))
    low, high = stats.auroc_interval(s, m, draws=300)
    assert low <= stats.auroc(s, m) <= high


def test_clopper_pearson_edges_are_exact():
    # k = 0: the upper end solves (1 - p)^n = alpha / 2
    assert stats.clopper_pearson(0, 20) == (0.0, pytest.approx(1 - 0.025 ** (1 / 20)))
    assert stats.clopper_pearson(20, 20) == (pytest.approx(0.025 ** (1 / 20)), 1.0)
    low, high = stats.clopper_pearson(5, 10)
    assert low < 0.5 < high and low == pytest.approx(1 - high)
    with pytest.raises(ValueError):
        stats.clopper_pearson(3, 2)


def test_tpr_at_fpr_never_exceeds_its_target_on_the_non_members():
    s = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], float)
    m = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0, 0], bool)
    op = stats.tpr_at_fpr(s, m, 0.0)
    assert (op.tp, op.fp, op.threshold) == (2, 0, 7.0)  # above the best non-member only
    op = stats.tpr_at_fpr(s, m, 1 / 6)
    assert (op.tp, op.fp) == (3, 1) and op.fpr <= 1 / 6
    assert op.tpr_ci[0] <= op.tpr <= op.tpr_ci[1]


def test_epsilon_from_rates_inverts_the_dp_inequalities():
    assert stats.epsilon_from_rates(0.5, 0.05, 0.0) == pytest.approx(math.log(10))
    assert stats.epsilon_from_rates(0.5, 0.5, 0.0) == 0.0
    # the second inequality: 1 - FPR <= e^eps (1 - TPR)
    assert stats.epsilon_from_rates(0.99, 0.5, 0.0) == pytest.approx(math.log(0.5 / 0.01))
    # delta removes what it can explain
    assert stats.epsilon_from_rates(1e-5, 0.0, 1e-5) == 0.0


def test_the_split_bound_sees_a_leak_and_not_chance():
    rng = np.random.default_rng(3)
    m = np.arange(80) < 40
    separated = np.where(m, 1.0, 0.0) + 0.01 * rng.random(80)
    leak = stats.split_epsilon_lower_bound(separated, m, 1e-5)
    # 20 members all above, 20 non-members all below on the counting half: log(0.025^(1/20) / (1 - 0.025^(1/20)))
    q = 0.025 ** (1 / 20)
    assert leak["epsilon_lower"] == pytest.approx(math.log((q - 1e-5) / (1 - q)), rel=1e-6)
    chance = [stats.split_epsilon_lower_bound(rng.random(80), m, 1e-5, seed=i)["epsilon_lower"] for i in range(20)]
    assert np.mean(np.array(chance) > 0) <= 0.15


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="members and non-members"):
        stats.auroc([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="finite"):
        stats.auroc([1.0, math.nan], [True, False])
