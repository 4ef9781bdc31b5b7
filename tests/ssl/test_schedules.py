import numpy as np
import pytest

from xr0_core.config import from_flat
from xr0_core.ssl.schedules import Schedules


def test_schedules_shapes_endpoints_and_clamping():
    cfg = from_flat({"train.lr": 0.0512, "train.batch-size": 50, "train.warmup-frac": 0.1,
                     "ssl.teacher-temp-warmup-frac": 0.5})
    s = Schedules.build(cfg, 100)
    peak = 0.0512 * 50 / 256
    assert all(len(a) == 100 for a in (s.lr, s.wd, s.momentum, s.teacher_temp))
    assert s.lr[0] == 0.0 and np.isclose(s.lr.max(), peak) and np.argmax(s.lr) == 10
    assert np.all(np.diff(s.lr[:10]) > 0) and np.all(np.diff(s.lr[10:]) <= 0)
    assert np.isclose(s.lr[-1], cfg.train.min_lr)
    assert np.isclose(s.wd[0], cfg.train.weight_decay) and np.isclose(s.wd[-1], cfg.train.weight_decay_end)
    assert np.isclose(s.momentum[0], cfg.ssl.momentum_start) and s.momentum[-1] == 1.0
    assert np.all(np.diff(s.momentum) >= 0)
    assert np.isclose(s.teacher_temp[0], cfg.ssl.teacher_temp_warmup)
    assert np.allclose(s.teacher_temp[49:], cfg.ssl.teacher_temp)
    assert s.at(10_000) == s.at(99) and s.at(-3) == s.at(0)


def test_schedule_is_a_function_of_the_global_step_only():
    """A site in round 3 of a 60-step run reads the value an uninterrupted run has at that global step: how the
    steps are split into rounds (local steps, rounds) changes nothing; the run's length and the step do."""
    cfg = from_flat({"train.warmup-frac": 0.1})
    split = from_flat({"train.warmup-frac": 0.1, "train.local-steps": 7, "federation.rounds": 9})
    a, b = Schedules.build(cfg, 60), Schedules.build(split, 60)
    assert a.at(41) == b.at(41)
    # the closed form at step 41: cosine from the peak (reached after 6 warmup steps) to min-lr over 54 steps
    peak = cfg.train.lr * cfg.train.batch_size / 256
    t = (41 - 6) / (54 - 1)
    assert np.isclose(a.at(41)["lr"], cfg.train.min_lr + 0.5 * (peak - cfg.train.min_lr) * (1 + np.cos(np.pi * t)))
    assert a.at(41) != a.at(40) and a.at(41) != Schedules.build(cfg, 61).at(41)
    with pytest.raises(ValueError):
        Schedules.build(cfg, 0)
