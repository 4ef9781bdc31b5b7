"""ViT backbones built by timm, one registry of presets (D5, D10; STYLE 5).

Every backbone is a timm ``VisionTransformer`` created with ``in_chans=1`` (radiographs are grayscale),
``num_classes=0`` (no classifier: heads live in :mod:`xr0_core.models.heads`) and ``dynamic_img_size=True``
(local crops are smaller than global crops; the position embedding is resampled on the fly).

The contract used everywhere else:

- ``vit.forward_features(x [B, 1, H, W]) -> [B, 1 + N, D]``: CLS token first, then ``N = (H/p) * (W/p)``
  patch tokens, after the final norm;
- ``vit.embed_dim`` = D, :func:`patch_size` = p;
- :func:`forward_tokens` = the same with iBOT masking (mask token replaces masked patch embeddings).

A preset is a timm model name plus keyword overrides; :func:`backbone_timm_spec` returns exactly what
``timm.create_model`` needs to rebuild the architecture, so an exported backbone loads with timm alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xr0_core.registry import Registry

if TYPE_CHECKING:  # torch / timm are imported lazily: no heavy import when the module is only inspected
    import torch
    from torch import nn

    from xr0_core.config import ModelConfig


@dataclass(frozen=True)
class BackbonePreset:
    """A timm architecture and the keyword overrides that make it an XR-0 backbone.

    Parameters
    ----------
    timm_name : str
        Name passed to ``timm.create_model`` (architecture only; weights are never downloaded).
    patch_size : int
        Patch side in pixels; always passed explicitly so the data pipeline knows the mask grid without
        building the model.
    overrides : dict
        Extra ``create_model`` kwargs (depth, patch size, ...). ``img_size`` comes from
        ``ModelConfig.img_size`` and ``drop_path_rate`` from ``ModelConfig.drop_path``.
    """

    timm_name: str
    patch_size: int
    overrides: dict[str, Any] = field(default_factory=dict)


BACKBONES: Registry[BackbonePreset] = Registry("backbone")

# cpu-tiny: ViT-Tiny width (192, 3 heads) with 8-pixel patches on 64-pixel crops (8x8 = 64 tokens) and 4 blocks:
# a step of batch 16 x (2 global + 4 local crops) takes a fraction of a second on 2 cores, and the 64-token
# grid is fine enough for iBOT masking to mean something.
BACKBONES.add("vit-tiny-p8", BackbonePreset("vit_tiny_patch16_224", 8, {"depth": 4}))
# The same 4-block ViT-Tiny with 16-pixel patches: 128-pixel crops at the token count (and step cost) of
# vit-tiny-p8 at 64 pixels (resolution ablation, docs/ablations.md).
BACKBONES.add("vit-tiny-p16", BackbonePreset("vit_tiny_patch16_224", 16, {"depth": 4}))
# Unit tests and smoke runs: same code path, a fraction of the compute (not for learning anything).
BACKBONES.add("vit-micro-p8", BackbonePreset("vit_tiny_patch16_224", 8, {"depth": 2, "embed_dim": 64, "num_heads": 2}))
BACKBONES.add("vit-s-p16", BackbonePreset("vit_small_patch16_224", 16))
BACKBONES.add("vit-b-p16", BackbonePreset("vit_base_patch16_224", 16))


def backbone_timm_spec(model_cfg: "ModelConfig") -> dict[str, Any]:
    """What ``timm.create_model`` needs to rebuild this backbone.

    Returns
    -------
    dict
        ``{"name": str, "kwargs": dict}``; ``timm.create_model(spec["name"], **spec["kwargs"])`` builds the
        architecture (random weights).
    """
    preset = BACKBONES.get(model_cfg.backbone)
    kwargs: dict[str, Any] = {
        **preset.overrides,
        "patch_size": preset.patch_size,
        "img_size": model_cfg.img_size,
        "in_chans": 1,
        "num_classes": 0,
        "dynamic_img_size": True,
        "drop_path_rate": model_cfg.drop_path,
    }
    return {"name": preset.timm_name, "kwargs": kwargs}


def build_backbone(model_cfg: "ModelConfig") -> "nn.Module":
    """Build the (randomly initialised) backbone of ``model_cfg``; seed torch beforehand for reproducibility.

    Raises
    ------
    KeyError
        Unknown ``model.backbone`` (the message lists the known presets).
    ValueError
        ``model.img-size`` is not a multiple of the patch size.
    """
    import timm

    spec = backbone_timm_spec(model_cfg)
    vit = timm.create_model(spec["name"], pretrained=False, **spec["kwargs"])
    _check_contract(vit, model_cfg)
    return vit


def _check_contract(vit: "nn.Module", model_cfg: "ModelConfig") -> None:
    for attr in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "cls_token"):
        if not hasattr(vit, attr):
            raise TypeError(f"backbone {model_cfg.backbone!r} is not a timm VisionTransformer (no {attr})")
    if getattr(vit, "num_prefix_tokens", 1) != 1:
        # forward_tokens and the heads assume exactly one prefix token (CLS) before the patch grid.
        raise ValueError(f"backbone {model_cfg.backbone!r} has {vit.num_prefix_tokens} prefix tokens; expected 1")
    p = patch_size(vit)
    if model_cfg.img_size % p:
        raise ValueError(f"model.img-size {model_cfg.img_size} must be a multiple of the patch size {p}")


def patch_size(vit: "nn.Module") -> int:
    """Side of a (square) patch in pixels."""
    ps = vit.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def grid_size(vit_or_patch: "nn.Module | int", img_size: int) -> int:
    """Patches per side for a square crop of ``img_size`` pixels."""
    p = vit_or_patch if isinstance(vit_or_patch, int) else patch_size(vit_or_patch)
    return img_size // p


def preset_patch_size(model_cfg: "ModelConfig") -> int:
    """Patch size of a preset without building the model (used by the data pipeline for mask grids)."""
    return BACKBONES.get(model_cfg.backbone).patch_size


def forward_tokens(
    vit: "nn.Module",
    x: "torch.Tensor",
    masks: "torch.Tensor | None" = None,
    mask_token: "torch.Tensor | None" = None,
) -> "torch.Tensor":
    """``forward_features`` with optional iBOT masking of patch embeddings.

    Parameters
    ----------
    vit : timm VisionTransformer
    x : Tensor [B, 1, H, W]
    masks : bool Tensor [B, N], optional
        True where the patch embedding is replaced by ``mask_token`` (before position embedding, as iBOT and
        DINOv2, so the model knows *where* a masked patch is but not what it shows). ``N = (H/p) * (W/p)``.
    mask_token : Tensor [1, D] or [D], required with ``masks``

    Returns
    -------
    Tensor [B, 1 + N, D]
        CLS token first, then patch tokens in row-major order, after the final norm.

    References
    ----------
    Zhou et al., iBOT (2022); Oquab et al., DINOv2 (2023), ``dinov2/models/vision_transformer.py``
    (``prepare_tokens_with_masks``).
    """
    import torch

    tokens = vit.patch_embed(x)  # [B, h, w, D] with dynamic_img_size, else [B, N, D]
    if masks is not None:
        if mask_token is None:
            raise ValueError("forward_tokens: masks given without a mask_token")
        b, d = tokens.shape[0], tokens.shape[-1]
        flat = tokens.reshape(b, -1, d)
        if masks.shape != flat.shape[:2]:
            raise ValueError(f"masks shape {tuple(masks.shape)} does not match the patch grid {tuple(flat.shape[:2])}")
        flat = torch.where(masks.unsqueeze(-1), mask_token.reshape(1, 1, d).to(flat.dtype), flat)
        tokens = flat.reshape(tokens.shape)
    tokens = vit._pos_embed(tokens)
    tokens = vit.patch_drop(tokens)
    tokens = vit.norm_pre(tokens)
    tokens = vit.blocks(tokens)
    return vit.norm(tokens)


def no_weight_decay_names(vit: "nn.Module") -> set[str]:
    """Parameter names (relative to the backbone) excluded from weight decay by timm's own contract."""
    names = getattr(vit, "no_weight_decay", None)
    return set(names()) if callable(names) else set()
