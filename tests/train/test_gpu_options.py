"""GPU-path options that run on CPU too: metrics gathered every K steps (no per-step host sync) give the
same training; torch.compile runs compiled blocks and keeps the state-dict names that leave the site."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.data.dataset import ImageCache
from xr0_core.train.loop import host_metrics
from xr0_core.train.trainer import SiteTrainer

from tests.tiny import SMALLER, tiny_flat

TINY = tiny_flat(**SMALLER)


def _cache() -> ImageCache:
    rng = np.random.default_rng(0)
    return ImageCache.from_arrays([rng.random((20, 20), dtype=np.float32) for _ in range(6)], 16)


def _run(log_every: int) -> tuple[list[tuple[int, float]], dict[str, torch.Tensor], dict[str, float]]:
    cfg = from_flat({**TINY, "train.log-every": log_every})
    trainer = SiteTrainer(cfg, [], site="s", cache=_cache())
    seen: list[tuple[int, float]] = []
    metrics = trainer.train(5, start_step=0, total_steps=5, on_step=lambda s, m: seen.append((s, m["loss"])))
    return seen, trainer.shared_state_dict(), metrics


def test_metrics_every_k_steps_same_training_and_callbacks():
    seen1, sd1, m1 = _run(1)
    seen3, sd3, m3 = _run(3)  # syncs after steps 2 and 4 (the last), not per step
    assert [s for s, _ in seen3] == [0, 1, 2, 3, 4]
    assert seen1 == seen3
    assert all(torch.equal(sd1[k], sd3[k]) for k in sd1)
    assert m1["loss"] == m3["loss"] and m1["loss-first"] == m3["loss-first"]


def test_host_metrics_refuses_non_finite_loss():
    with pytest.raises(FloatingPointError, match="step 7"):
        host_metrics({"loss": torch.tensor(math.nan), "lr": 0.1}, 7)
    out = host_metrics({"loss": torch.tensor(2.0), "grad-norm": torch.tensor(1.5), "lr": 0.1})
    assert out == {"loss": 2.0, "grad-norm": 1.5, "lr": 0.1}


@pytest.mark.slow  # torch.compile builds its kernels with the C++ compiler on first use (tens of seconds)
def test_compiled_training_runs_compiled_blocks_matches_eager_and_keeps_shared_names():
    """``train.compile``: the training step really runs compiled code (dynamo captured graphs of the blocks the
    SSL forward calls), trains to the same weights as eager within float tolerance, and the shared state-dict
    names stay the same."""
    from torch._dynamo.utils import counters

    eager = SiteTrainer(from_flat(TINY), [], site="s", cache=_cache())
    compiled = SiteTrainer(from_flat({**TINY, "train.compile": True}), [], site="s", cache=_cache())
    start = compiled.shared_state_dict()
    m_eager = eager.train(2, start_step=0, total_steps=2)
    counters.clear()
    m_compiled = compiled.train(2, start_step=0, total_steps=2)
    assert counters["stats"]["unique_graphs"] >= 1  # a compiled forward ran (and its backward)
    assert list(compiled.shared_state_dict()) == list(start)
    assert m_compiled["loss-first"] == pytest.approx(m_eager["loss-first"], rel=1e-4)
    a, b = eager.shared_state_dict(), compiled.shared_state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)
    assert any(not torch.equal(b[k], start[k]) for k in b)  # the compiled steps moved the weights
