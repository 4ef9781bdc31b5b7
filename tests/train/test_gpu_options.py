"""GPU-path options that run on CPU too: metrics gathered every K steps (no per-step host sync) give the
same training; torch.compile keeps the state-dict names that leave the site."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.data.dataset import ImageCache
from xr0_core.train.loop import host_metrics
from xr0_core.train.trainer import SiteTrainer

TINY = {"model.backbone": "vit-micro-p8", "model.img-size": 16, "ssl.local-size": 8, "train.load-size": 16,
        "train.batch-size": 4, "ssl.n-local-crops": 2, "train.device": "cpu"}


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


def test_compile_option_keeps_shared_names():
    cfg = from_flat({**TINY, "train.compile": True})
    trainer = SiteTrainer(cfg, [], site="s", cache=_cache())
    before = list(trainer.shared_state_dict())
    trainer._maybe_compile()  # compiles lazily at the first forward; here only the wrapping is checked
    assert trainer._compiled and list(trainer.shared_state_dict()) == before
