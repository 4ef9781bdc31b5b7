"""Export round trip: timm alone rebuilds the backbone from our safetensors (D11)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from xr0_core.config import from_flat
from xr0_core.export import export_backbone, load_exported
from xr0_core.ssl.method import XR0SSL


def test_export_is_timm_loadable_and_gives_the_same_features(tmp_path):
    import timm

    cfg = from_flat({"model.img-size": 32, "ssl.local-size": 16, "train.load-size": 32})
    torch.manual_seed(0)
    model = XR0SSL(cfg)
    backbone = model.student["backbone"].eval()
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the timm init: the loaded weights must really be ours
    path = tmp_path / "backbone.safetensors"
    side = export_backbone(backbone, cfg.model, path, extra={"steps": 3})
    spec = json.loads((tmp_path / "backbone.json").read_text())
    assert spec == json.loads(json.dumps(side)) and spec["steps"] == 3

    sd = load_file(str(path))
    fresh = timm.create_model(spec["timm_name"], pretrained=False, **spec["timm_kwargs"])
    assert set(sd) == set(fresh.state_dict()) and "mask_token" not in sd

    loaded = load_exported(path)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), backbone.forward_features(x))
        # Plain timm with the documented overlay (offline file load) gives the same model.
        plain = timm.create_model(spec["timm_name"], pretrained=True, **spec["timm_kwargs"],
                                  pretrained_cfg_overlay={**spec["pretrained_cfg_overlay"], "file": str(path)})
        torch.testing.assert_close(plain.eval().forward_features(x), backbone.forward_features(x))


def test_load_exported_refuses_a_file_with_missing_keys(tmp_path):
    from safetensors.torch import save_file

    cfg = from_flat({"model.img-size": 32, "ssl.local-size": 16, "train.load-size": 32})
    model = XR0SSL(cfg)
    path = tmp_path / "b.safetensors"
    export_backbone(model.student["backbone"], cfg.model, path)
    sd = load_file(str(path))
    sd.pop("norm.weight")
    save_file(sd, str(path))
    with pytest.raises((ValueError, RuntimeError)):
        load_exported(path)
