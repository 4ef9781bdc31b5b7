import numpy as np
import pytest

from strategies.aggregate import ServerOptimizer, global_norm, weighted_mean
from strategies.validate import check_update


def _sets(rng, n, shapes):
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


def test_weighted_mean_equals_exact_mean():
    rng = np.random.default_rng(0)
    sets = _sets(rng, 3, {"a": (4, 5), "b": (7,)})
    w = [10, 30, 60]
    got = weighted_mean(sets, w)
    for k in ("a", "b"):
        expect = sum(wi * s[k].astype(np.float64) for wi, s in zip(w, sets)) / sum(w)
        np.testing.assert_allclose(got[k], expect, rtol=1e-6, atol=1e-7)
        assert got[k].dtype == np.float32


def test_weighted_mean_is_bit_identical_to_the_float64_sum_in_order():
    # what a resumed run relies on: the same replies in the same order give the same bits
    rng = np.random.default_rng(1)
    sets = _sets(rng, 7, {"a": (33, 17), "b": (5,)})
    w = [3, 1, 4, 1, 5, 9, 2]
    got = weighted_mean(sets, w)
    p = np.asarray(w, dtype=np.float64) / sum(w)
    for k in ("a", "b"):
        acc = np.zeros(sets[0][k].shape)
        for pi, s in zip(p, sets):
            acc += pi * s[k].astype(np.float64)
        assert np.array_equal(got[k], acc.astype(np.float32))


def test_weighted_mean_rejects_bad_weights():
    rng = np.random.default_rng(0)
    sets = _sets(rng, 2, {"a": (2,)})
    with pytest.raises(ValueError):
        weighted_mean(sets, [0, 0])
    with pytest.raises(ValueError):
        weighted_mean(sets, [1])


def test_fedavg_server_step_returns_the_mean_and_fedavgm_accumulates_momentum():
    g = {"w": np.zeros(3, np.float32)}
    mean = {"w": np.ones(3, np.float32)}
    assert np.allclose(ServerOptimizer("fedavg").apply(g, mean)["w"], 1.0)
    opt = ServerOptimizer("fedavgm", lr=1.0, momentum=0.5)
    w1 = opt.apply(g, mean)["w"]  # m = 1
    w2 = opt.apply({"w": w1 * 0}, mean)["w"]  # m = 0.5 * 1 + 1
    assert np.allclose(w1, 1.0) and np.allclose(w2, 1.5)


def test_fedadam_state_round_trips():
    rng = np.random.default_rng(1)
    g = {"w": rng.standard_normal(4).astype(np.float32)}
    opt = ServerOptimizer("fedadam", lr=0.1)
    opt.apply(g, {"w": g["w"] + 1})
    clone = ServerOptimizer("fedadam", lr=0.1)
    clone.load_state_arrays(opt.state_arrays(), opt.steps)
    mean = {"w": g["w"] - 1}
    np.testing.assert_allclose(opt.apply(g, mean)["w"], clone.apply(g, mean)["w"], rtol=1e-6)


def test_check_update_names_each_problem():
    ref = {"a": np.zeros((2, 2), np.float32)}
    assert check_update({"a": np.ones((2, 2), np.float32)}, ref) is None
    assert "keys" in check_update({"b": np.ones((2, 2), np.float32)}, ref)
    assert "shape" in check_update({"a": np.ones((3, 2), np.float32)}, ref)
    assert "dtype" in check_update({"a": np.ones((2, 2), np.float64)}, ref)
    bad = np.ones((2, 2), np.float32)
    bad[0, 1] = np.nan
    assert "non-finite" in check_update({"a": bad}, ref)
    assert "norm" in check_update({"a": np.full((2, 2), 10, np.float32)}, ref, max_update_norm=1.0)
    assert global_norm({"a": np.full((2, 2), 10, np.float32)}) == pytest.approx(20.0)
