"""Backbone presets (timm contract), heads and EMA."""

from __future__ import annotations

import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.models.backbone import (
    BACKBONES,
    backbone_timm_spec,
    build_backbone,
    forward_tokens,
    patch_size,
    preset_patch_size,
)
from xr0_core.models.ema import ema_update_
from xr0_core.models.heads import DINOHead


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_preset_builds_a_grayscale_timm_vit_with_one_prefix_token(name: str):
    # Shape check on the meta device: no memory, no init time, even for ViT-B.
    cfg = from_flat({"model.backbone": name, "model.img-size": 64, "train.load-size": 96})
    with torch.device("meta"):
        vit = build_backbone(cfg.model)
    assert vit.num_prefix_tokens == 1 and vit.num_classes == 0
    assert vit.patch_embed.proj.in_channels == 1
    assert patch_size(vit) == preset_patch_size(cfg.model)
    spec = backbone_timm_spec(cfg.model)
    assert spec["kwargs"]["in_chans"] == 1 and spec["kwargs"]["dynamic_img_size"] is True


def test_unknown_backbone_lists_known_ones():
    cfg = from_flat({"model.backbone": "resnet-9000"})
    with pytest.raises(KeyError, match="vit-tiny-p8"):
        build_backbone(cfg.model)


def _tiny():
    cfg = from_flat({"model.img-size": 32, "ssl.local-size": 16, "train.load-size": 32})
    torch.manual_seed(0)
    return build_backbone(cfg.model).eval(), cfg


def test_forward_tokens_matches_forward_features_and_accepts_local_crop_sizes():
    vit, _ = _tiny()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(forward_tokens(vit, x), vit.forward_features(x))
    assert vit.forward_features(torch.rand(2, 1, 16, 16)).shape == (2, 1 + 4, vit.embed_dim)


def test_masking_changes_only_what_the_mask_token_replaces():
    vit, _ = _tiny()
    x = torch.rand(2, 1, 32, 32)
    n = (32 // patch_size(vit)) ** 2
    token = torch.randn(1, vit.embed_dim)
    none = torch.zeros(2, n, dtype=torch.bool)
    torch.testing.assert_close(forward_tokens(vit, x, none, token), vit.forward_features(x))
    masks = none.clone()
    masks[0, :3] = True
    out = forward_tokens(vit, x, masks, token)
    assert not torch.allclose(out[0], vit.forward_features(x)[0])
    torch.testing.assert_close(out[1], vit.forward_features(x)[1])  # sample 1 unmasked: unchanged
    # A masked patch's content no longer matters: changing its pixels leaves the output unchanged.
    x2 = x.clone()
    x2[0, :, :8, :8] += 1.0  # patch 0 of sample 0 (masked)
    torch.testing.assert_close(forward_tokens(vit, x2, masks, token)[0], out[0])
    with pytest.raises(ValueError):
        forward_tokens(vit, x, torch.zeros(2, n + 1, dtype=torch.bool), token)


def test_dino_head_outputs_normalised_prototype_logits_with_plain_state_dict():
    head = DINOHead(16, out_dim=10, hidden_dim=32, bottleneck_dim=8, nlayers=3)
    x = torch.randn(5, 16)
    logits = head(x)
    assert logits.shape == (5, 10)
    assert logits.abs().max() <= 1.0 + 1e-5  # cosine between unit bottleneck and unit prototypes
    head.prototypes.data *= 7.0  # prototype norms do not matter (weight norm with gain 1)
    torch.testing.assert_close(head(x), logits)
    sd = head.state_dict()
    assert all(v.dtype == torch.float32 and type(v) is torch.Tensor for v in sd.values())
    assert "prototypes" in sd and not any("weight_g" in k or "parametrizations" in k for k in sd)


def test_ema_update_is_the_convex_combination_in_place():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ptr = teacher[0].weight.data_ptr()
    ema_update_(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * student.state_dict()[k])
    assert teacher[0].weight.data_ptr() == ptr
    ema_update_(teacher, student, 0.0)
    torch.testing.assert_close(teacher[0].weight, student[0].weight)
    with pytest.raises(ValueError):
        ema_update_(teacher, torch.nn.Linear(3, 4), 0.5)
    with pytest.raises(ValueError):
        ema_update_(teacher, student, 1.5)
