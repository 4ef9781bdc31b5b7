"""XR0SSL: shapes, finiteness, what is shared and what stays."""

from __future__ import annotations

import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.ssl.method import MASK_TOKEN, XR0SSL

from tests.tiny import tiny_flat

TINY = tiny_flat(**{"model.head-out-dim": 64, "model.ibot-out-dim": 48, "model.head-hidden-dim": 32,
                     "model.head-bottleneck-dim": 16})


def _batch(b=3, g=2, l=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(b, g, 16, generator=gen) < 0.3
    masks[0, :, 0] = True
    return {"global": torch.randn(b, g, 1, 32, 32, generator=gen), "local": torch.randn(b, l, 1, 16, 16, generator=gen),
            "masks": masks}


@pytest.mark.parametrize("koleo", [0.0, 0.1])
def test_forward_returns_per_sample_losses_and_parts(koleo):
    torch.manual_seed(0)
    model = XR0SSL(from_flat({**TINY, "ssl.koleo-weight": koleo}))
    out = model(_batch(), 0.04)
    assert out.loss.shape == (3,) and torch.isfinite(out.loss).all()
    assert set(out.parts) == ({"dino", "ibot", "koleo"} if koleo else {"dino", "ibot"})
    expected = out.parts["dino"] + out.parts["ibot"] + koleo * out.parts.get("koleo", 0)
    torch.testing.assert_close(out.loss, expected)
    assert out.teacher["dino"].shape == (3, 2, 64)
    assert out.teacher["ibot"].shape == (int(_batch()["masks"].sum()), 48)
    assert model.coupling == "batch"  # ema centering (and koleo) couple samples
    out.loss.mean().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_frozen_center_without_koleo_is_per_sample_in_the_full_model():
    torch.manual_seed(0)
    model = XR0SSL(from_flat({**TINY, "ssl.centering": "frozen-per-round", "ssl.koleo-weight": 0.0})).eval()
    assert model.coupling == "per-sample"
    batch = _batch(b=3)
    full = model(batch, 0.05).loss
    for i in range(3):
        alone = model({k: v[i:i + 1] for k, v in batch.items()}, 0.05).loss
        torch.testing.assert_close(alone[0], full[i], rtol=1e-4, atol=1e-5)


def test_shared_state_dict_is_student_only_float32_cpu_and_round_trips():
    torch.manual_seed(0)
    model = XR0SSL(from_flat(TINY))
    sd = model.shared_state_dict()
    assert MASK_TOKEN in sd and not any(k.startswith(("teacher", "dino_loss", "ibot_loss")) for k in sd)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in sd.values())
    assert {k.split(".")[0] for k in sd} == {"backbone", "dino_head", "ibot_head", MASK_TOKEN}
    assert not any("center" in k for k in sd)
    torch.manual_seed(1)
    other = XR0SSL(from_flat(TINY))
    other.load_shared_state_dict(sd)
    for k, v in other.shared_state_dict().items():
        torch.testing.assert_close(v, sd[k])
    site = model.site_state_dict()
    assert any(k.startswith("teacher.") for k in site) and "dino_loss.centering.center" in site


def test_load_shared_state_dict_names_what_is_wrong():
    model = XR0SSL(from_flat(TINY))
    sd = model.shared_state_dict()
    missing = dict(sd)
    missing.pop(MASK_TOKEN)
    with pytest.raises(ValueError, match="missing.*mask_token"):
        model.load_shared_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected.*teacher.x"):
        model.load_shared_state_dict({**sd, "teacher.x": torch.zeros(1)})
    bad = {**sd, MASK_TOKEN: torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="wrong shapes.*mask_token"):
        model.load_shared_state_dict(bad)
