"""SSL health metrics: RankMe and friends, the collapse verdict, and logging from the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xr0_core.config import from_flat
from xr0_core.data.dataset import ImageCache
from xr0_core.train.health import knn_probe, probe_health, rankme, ssl_health
from xr0_core.train.health_verdict import COLLAPSED, NOT_LEARNING, OK, assess
from xr0_core.train.trainer import SiteTrainer

from tests.tiny import TINY


class ConstantBackbone(nn.Module):
    """A deliberately collapsed backbone: the same tokens whatever the image."""

    embed_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(1, 5, 16))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens.expand(x.shape[0], -1, -1)


def _views(n=12, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_rankme_counts_directions():
    assert abs(rankme(torch.ones(10, 8)) - 1.0) < 1e-3  # one point
    assert abs(rankme(torch.ones(10, 8), center=False) - 1.0) < 1e-3  # one direction
    eye = rankme(torch.eye(8))
    assert rankme(torch.eye(8), center=False) == pytest.approx(8.0, abs=1e-2)  # eight equal directions
    assert eye > 6.5
    assert rankme(torch.zeros(4, 3)) == 1.0


def test_collapsed_model_is_flagged():
    h = probe_health(ConstantBackbone(), _views())
    assert h["rankme-cls"] < 1.01 and h["feature-std"] < 1e-6
    verdict = assess([h])
    assert verdict["status"] == COLLAPSED
    assert any("RankMe" in r for r in verdict["reasons"])


def test_random_init_vit_is_not_flagged():
    trainer = SiteTrainer(from_flat(TINY), [], site="h1", cache=_cache())
    h = ssl_health(trainer.model, _views(), teacher_temp=0.04)
    assert h["rankme-cls"] > 2.0
    assert 1 <= h["prototype-usage"] <= h["prototypes"]
    assert 0 <= h["teacher-entropy"] <= np.log(h["prototypes"]) + 1e-6
    assert assess([h])["status"] == OK


def test_not_learning_needs_flat_loss_and_still_features():
    h = {"rankme-cls": 10.0, "feature-std": 0.1, "feature-change": 0.0}
    assert assess([h], [1.0] * 20)["status"] == NOT_LEARNING
    assert assess([h], list(np.linspace(2.0, 1.0, 20)))["status"] == OK
    assert assess([{**h, "feature-change": 0.5}], [1.0] * 20)["status"] == OK


def test_knn_probe_separates_separable_labels():
    x = torch.cat([torch.randn(10, 4) + 5, torch.randn(10, 4) - 5])
    y = torch.tensor([0] * 10 + [1] * 10)
    assert knn_probe(x, y) == 1.0
    assert np.isnan(knn_probe(x, torch.full((20,), -1)))


def _cache(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return ImageCache.from_arrays([rng.random((36, 40), dtype=np.float32) for _ in range(n)], 32)


def test_trainer_logs_health_every_k_steps_and_returns_the_last():
    trainer = SiteTrainer(from_flat({**TINY, "train.health-every": 2}), [], site="h1", cache=_cache())
    rows = []
    metrics = trainer.train(5, start_step=0, total_steps=5, on_step=lambda s, m: rows.append(dict(m)))
    with_health = [i for i, r in enumerate(rows) if "health/rankme-cls" in r]
    assert with_health == [1, 3, 4]  # every 2 global steps, and the last step of the call
    assert metrics["health/rankme-cls"] == rows[-1]["health/rankme-cls"]
    assert rows[-1]["health/feature-change"] > 0  # the features moved since the first measurement


def test_health_off_and_training_unchanged():
    a = SiteTrainer(from_flat({**TINY, "train.health-every": 0}), [], site="h1", cache=_cache())
    b = SiteTrainer(from_flat({**TINY, "train.health-every": 1}), [], site="h1", cache=_cache())
    ma = a.train(3, start_step=0, total_steps=3)
    b.train(3, start_step=0, total_steps=3)
    assert not any(k.startswith("health/") for k in ma)
    sa, sb = a.shared_state_dict(), b.shared_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # measuring health does not change what is learned


def test_trainer_with_a_collapsed_student_reports_collapse():
    """A student whose final norm is zeroed outputs the same (zero) tokens for every image."""
    trainer = SiteTrainer(from_flat(TINY), [], site="h1", cache=_cache())
    with torch.no_grad():
        norm = trainer.model.student["backbone"].norm
        norm.weight.zero_()
        norm.bias.fill_(0.5)
    h = trainer.measure_health(step=0, total_steps=1)
    assert h["health/rankme-cls"] < 1.01
    verdict = assess([h])
    assert verdict["status"] == COLLAPSED and verdict["last"]["rankme-cls"] < 1.01
