"""model.init-from: a DINOv2 / RAD-DINO-layout checkpoint (3 channels, other grid, LayerScale) starts the
backbone exactly, and a file with another SHA-256 is refused."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from xr0_core.config import ConfigError, from_flat
from xr0_core.models.init_from import InitFromError, file_sha256
from xr0_core.ssl.factory import build_model

MICRO = {"model.backbone": "vit-micro-p8", "model.img-size": 64, "ssl.local-size": 32}


def _dinov2_like(seed: int = 0) -> torch.nn.Module:
    """Same width / depth as vit-micro-p8, but RGB input, a 12x12 grid (96 px) and LayerScale, as DINOv2."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, patch_size=8, img_size=96, in_chans=3,
                            depth=2, embed_dim=64, num_heads=2, num_classes=0, init_values=0.3,
                            dynamic_img_size=True)
    with torch.no_grad():  # LayerScale away from its constant init, so folding it is really tested
        for name, p in vit.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.2, 1.5)
    return vit.eval()


def _to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm keys -> Hugging Face Dinov2Model keys (the RAD-DINO layout)."""
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.mask_token": torch.zeros(1, sd["cls_token"].shape[-1]),
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    names = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"}
    for b in range(2):
        for t, h in names.items():
            for kind in ("weight", "bias"):
                out[f"encoder.layer.{b}.{h}.{kind}"] = sd[f"blocks.{b}.{t}.{kind}"]
        for kind in ("weight", "bias"):
            q, k, v = sd[f"blocks.{b}.attn.qkv.{kind}"].chunk(3, 0)
            for name, part in (("query", q), ("key", k), ("value", v)):
                out[f"encoder.layer.{b}.attention.attention.{name}.{kind}"] = part
        out[f"encoder.layer.{b}.layer_scale1.lambda1"] = sd[f"blocks.{b}.ls1.gamma"]
        out[f"encoder.layer.{b}.layer_scale2.lambda1"] = sd[f"blocks.{b}.ls2.gamma"]
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("layout", ["dinov2-pth", "rad-dino-safetensors"])
def test_init_from_dinov2_layout_matches_source_model(tmp_path, layout):
    src = _dinov2_like()
    sd = {k: v.detach().clone() for k, v in src.state_dict().items()}
    if layout == "dinov2-pth":
        path = tmp_path / "dinov2_vits14_pretrain.pth"
        torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}}, path)
    else:
        path = tmp_path / "rad-dino.safetensors"
        save_file(_to_hf(sd), str(path))
    cfg = from_flat({**MICRO, "model.init-from": str(path), "model.init-sha256": file_sha256(path)})
    model = build_model(cfg)
    ours = model.student["backbone"].eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = src.forward_features(x.repeat(1, 3, 1, 1))  # gray image in R, G and B; grid resampled 12 -> 8
        got = ours.forward_features(x)
    assert got.shape == expected.shape == (2, 1 + 64, 64)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    # The teacher starts from the same backbone; random init would be far away.
    for (k, a), b in zip(ours.state_dict().items(), model.teacher["backbone"].state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.allclose(build_model(from_flat(MICRO)).student["backbone"].forward_features(x), got, atol=1e-2)


def test_init_from_refuses_a_different_file_and_a_missing_hash(tmp_path):
    src = _dinov2_like()
    good, other = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(src.state_dict(), good)
    torch.save(_dinov2_like(seed=1).state_dict(), other)
    with pytest.raises(ConfigError, match="init-sha256"):
        from_flat({**MICRO, "model.init-from": str(good)})
    cfg = from_flat({**MICRO, "model.init-from": str(other), "model.init-sha256": file_sha256(good)})
    with pytest.raises(InitFromError, match="refusing to train"):
        build_model(cfg)


def test_init_from_wrong_width_names_the_fitting_preset(tmp_path):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, patch_size=8, img_size=64, in_chans=3,
                            depth=2, embed_dim=96, num_heads=2, num_classes=0)
    path = tmp_path / "wide.pth"
    torch.save(vit.state_dict(), path)
    cfg = from_flat({**MICRO, "model.init-from": str(path), "model.init-sha256": file_sha256(path)})
    with pytest.raises(InitFromError, match="does not fit"):
        build_model(cfg)
