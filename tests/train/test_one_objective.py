"""One objective, two routes: the DP step's per-unit gradients are the gradients of the plain forward.

The plain step differentiates ``XR0SSL.forward(batch).loss.mean()``; the DP step's vmap route maps
``XR0SSL.sample_loss`` (the same ``student_losses`` on a batch of one) with teacher targets from the same teacher
pass. These tests fail when a second copy of the loss drifts: a change of the iBOT term in ONE place must move
both routes, and they must still agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.data.dataset import BatchMaker, ImageCache
from xr0_core.privacy.dp import dp_objective_config
from xr0_core.ssl.factory import build_model
from xr0_core.ssl.losses.ibot import iBOTPatchLoss
from xr0_core.train.loop import trainable_parameters
from xr0_core.train.per_unit import per_unit_grads_vmap

from tests.tiny import tiny_flat

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_flat(**{"privacy.enabled": True})
TEMP = 0.05
SLOT = torch.tensor([0, 0, 1, 2, 2])  # 5 images, 3 units (two with two images)


@pytest.fixture(scope="module")
def setup():
    import numpy as np

    cfg = dp_objective_config(from_flat(TINY))
    model = build_model(cfg)
    with torch.no_grad():  # a teacher that differs from the student, so targets are not the student's own
        for p in model.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    cache = ImageCache.from_arrays([rng.random((36, 40), dtype=np.float32) for _ in range(5)], 32)
    batch = BatchMaker(cache, cfg, site="h", patch_size=model.patch_size).build(0, torch.arange(5))
    batch.pop("index")
    assert batch["masks"].any(), "the batch must hold masked tokens for the iBOT term to matter"
    return model, batch


def plain_unit_grads(model, batch) -> dict[str, torch.Tensor]:
    """For each unit: autograd of the plain forward's mean loss over that unit's images (no per-unit code)."""
    params = trainable_parameters(model)
    out = {k: [] for k in params}
    for u in range(int(SLOT.max()) + 1):
        rows = torch.nonzero(SLOT == u).flatten()
        loss = model({k: v[rows] for k, v in batch.items()}, TEMP).loss.float().mean()
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            out[k].append(torch.zeros_like(params[k]) if g is None else g)
    return {k: torch.stack(v) for k, v in out.items()}


def assert_routes_agree(model, batch) -> dict[str, torch.Tensor]:
    dp_grads, _ = per_unit_grads_vmap(model, batch, SLOT, 3, TEMP)
    plain = plain_unit_grads(model, batch)
    assert set(dp_grads) == set(plain)
    for k in plain:
        torch.testing.assert_close(dp_grads[k], plain[k], rtol=1e-3, atol=1e-5, msg=k)
    return dp_grads


def test_dp_per_unit_gradients_equal_autograd_of_the_plain_forward(setup):
    model, batch = setup
    grads = assert_routes_agree(model, batch)
    assert any(float(g.abs().max()) > 0 for g in grads.values())


def test_a_change_of_the_ibot_weight_in_one_place_moves_both_routes(setup):
    model, batch = setup
    before_plain = model(batch, TEMP).loss.detach()
    before_dp, _ = per_unit_grads_vmap(model, batch, SLOT, 3, TEMP)
    old = model.weights["ibot"]
    model.weights["ibot"] = old * 3.0 + 1.0  # the one place the iBOT weighting lives
    try:
        after_plain = model(batch, TEMP).loss.detach()
        after_dp = assert_routes_agree(model, batch)  # both routes moved, and they still agree
    finally:
        model.weights["ibot"] = old
    assert not torch.allclose(before_plain, after_plain)
    assert any(not torch.allclose(before_dp[k], after_dp[k]) for k in before_dp)


def test_a_change_of_the_ibot_loss_code_moves_both_routes(setup, monkeypatch):
    """Editing the iBOT loss module (here: per-token cross-entropy doubled) changes both routes alike."""
    model, batch = setup
    before_plain = model(batch, TEMP).parts["ibot"].detach()
    before_dp, _ = per_unit_grads_vmap(model, batch, SLOT, 3, TEMP)
    original = iBOTPatchLoss.forward
    monkeypatch.setattr(iBOTPatchLoss, "forward", lambda self, *a, **k: 2.0 * original(self, *a, **k))
    torch.testing.assert_close(model(batch, TEMP).parts["ibot"].detach(), 2.0 * before_plain)
    after_dp = assert_routes_agree(model, batch)
    assert any(not torch.allclose(before_dp[k], after_dp[k]) for k in before_dp)


def test_no_second_copy_of_the_self_distillation_cross_entropy():
    """A guard next to the behavioural checks above: outside ssl/losses no xr0_core module computes a
    log-softmax cross-entropy against teacher targets (the DP route used to hold its own)."""
    offenders = []
    for path in sorted((ROOT / "xr0_core").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("xr0_core/ssl/losses/") or rel.startswith("xr0_core/eval/"):
            continue  # eval heads train their own probes (segmentation, retrieval): not the SSL objective
        if "log_softmax" in path.read_text():
            offenders.append(rel)
    assert offenders == []
