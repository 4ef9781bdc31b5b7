"""Start from a local pretrained backbone: ``model.init-from PATH`` (+ ``model.init-sha256``), no network.

Hospitals often hold a general-purpose backbone: DINOv2 ViT-S/14 or ViT-B/14 (timm / facebookresearch
layout), RAD-DINO (Hugging Face ``Dinov2Model`` layout), or an earlier XR-0 export (timm layout, 1 channel).
:func:`load_backbone_weights` turns any of them into the state dict of the preset's timm ViT:

- Hugging Face keys (``embeddings.*``, ``encoder.layer.N.*``) are renamed to timm's; separate q / k / v
  projections are concatenated into ``qkv``;
- LayerScale (DINOv2's ``ls1.gamma`` / ``ls2.gamma``) is folded into the linear layer it scales
  (``attn.proj``, ``mlp.fc2``): ``gamma * (W x + b) = (gamma W) x + gamma b``, exact, so the preset's
  architecture needs no LayerScale;
- a 3-channel patch embedding becomes 1-channel by summing over the channels (timm's ``adapt_input_conv``:
  a gray image repeated in R, G, B gives the same response);
- a different patch size (14 -> 16) is resampled with timm's pseudo-inverse ``resample_patch_embed``
  (FlexiViT), and the position embedding is resized bicubically to the preset's grid.

Widths and depths must match the preset (ViT-S/14 -> ``vit-s``, ViT-B/14 -> ``vit-b``); otherwise the error
says which preset fits. Register tokens (DINOv2 "reg" models) are refused: the backbone contract has exactly
one prefix token.

The run config names the file by its SHA-256 (``model.init-sha256``); :func:`checked_init_file` refuses a file
with another hash, so every site starts from the same weights or does not train.

References: Oquab et al., DINOv2 (2023); Perez-Garcia et al., RAD-DINO (2024); Beyer et al., FlexiViT (2023);
timm ``_load_weights`` / ``checkpoint_filter_fn`` (``vision_transformer.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from xr0_core.config import ModelConfig


class InitFromError(ValueError):
    """The init-from file cannot be used; the message says what to do."""


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def checked_init_file(model_cfg: ModelConfig) -> Path:
    """The init-from file after checking it exists and has the run config's SHA-256."""
    path = Path(model_cfg.init_from).expanduser()
    if not path.is_file():
        raise InitFromError(f"model.init-from {str(path)!r} is not a file at this site; stage the backbone file "
                            "there (the run config names it by SHA-256, no download happens)")
    digest = file_sha256(path)
    if digest != model_cfg.init_sha256:
        raise InitFromError(f"model.init-from {path} has SHA-256 {digest}, but the run config names "
                            f"{model_cfg.init_sha256}: this site holds another file; refusing to train")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors or PyTorch file (``weights_only``); unwraps ``model`` / ``state_dict`` /
    ``teacher`` containers and ``module.`` / ``backbone.`` prefixes."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix == ".safetensors" or (len(head) == 8 and int.from_bytes(head, "little") < 100_000_000
                                         and not head.startswith(b"PK")):
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            if path.suffix == ".safetensors":
                raise InitFromError(f"{path}: not a readable safetensors file ({exc})") from None
            sd = None
        if sd is not None:
            return _unwrap(sd)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InitFromError(f"{path}: neither safetensors nor a weights-only PyTorch file ({exc})") from None
    for key in ("teacher", "model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise InitFromError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return _unwrap({k: v for k, v in obj.items() if torch.is_tensor(v)})


def _unwrap(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for prefix in ("module.", "teacher.backbone.", "student.backbone.", "backbone.", "dinov2.", "model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


_HF_BLOCK = {
    "norm1": "norm1", "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
}


def hf_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` keys (RAD-DINO) -> timm ``VisionTransformer`` keys."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in ("embeddings.cls_token",):
            out["cls_token"] = value
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif key == "embeddings.register_tokens":
            out["reg_token"] = value
        elif (m := re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", key)):
            block, name, kind = int(m.group(1)), m.group(2), m.group(3)
            if (q := re.match(r"attention\.attention\.(query|key|value)$", name)):
                qkv.setdefault((block, kind), {})[q.group(1)] = value
                continue
            full = f"{name}.{kind}" if kind == "lambda1" else name
            if full not in _HF_BLOCK:
                continue
            suffix = "" if kind == "lambda1" else f".{kind}"
            out[f"blocks.{block}.{_HF_BLOCK[full]}{suffix}"] = value
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def _fold_layer_scale(sd: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
    for key in [k for k in sd if re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k)]:
        if key in target:
            continue  # the preset keeps LayerScale: load as is
        gamma = sd.pop(key).float()
        layer = key.replace("ls1.gamma", "attn.proj").replace("ls2.gamma", "mlp.fc2")
        sd[f"{layer}.weight"] = gamma[:, None] * sd[f"{layer}.weight"].float()
        if f"{layer}.bias" in sd:
            sd[f"{layer}.bias"] = gamma * sd[f"{layer}.bias"].float()


def _describe(sd: Mapping[str, torch.Tensor]) -> str:
    width = sd["cls_token"].shape[-1] if "cls_token" in sd else "?"
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    name = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 192: "ViT-Ti"}.get(width, "ViT") if isinstance(width, int) else "?"
    return f"width {width}, {depth} blocks ({name})"


def adapt_state_dict(sd: Mapping[str, torch.Tensor], vit: nn.Module) -> dict[str, torch.Tensor]:
    """Convert a timm / DINOv2 / Hugging Face / XR-0 state dict to ``vit``'s keys and shapes (see module doc)."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    sd = dict(sd)
    if any(k.startswith("embeddings.") for k in sd):
        sd = hf_to_timm(sd)
    if "reg_token" in sd:
        raise InitFromError("the checkpoint has register tokens (DINOv2 '-reg' model): XR-0 backbones have exactly "
                            "one prefix token (CLS); use a model without registers")
    target = vit.state_dict()
    if "patch_embed.proj.weight" not in sd or "pos_embed" not in sd:
        raise InitFromError("not a ViT checkpoint: no patch_embed.proj.weight / pos_embed (after mapping DINOv2, "
                            "RAD-DINO and timm layouts)")
    _fold_layer_scale(sd, target)
    w = sd["patch_embed.proj.weight"].float()
    if w.shape[1] != target["patch_embed.proj.weight"].shape[1]:
        w = w.sum(dim=1, keepdim=True)  # 3 -> 1 channel (timm adapt_input_conv)
    want = target["patch_embed.proj.weight"].shape
    if w.shape[-2:] != want[-2:]:
        w = resample_patch_embed(w, list(want[-2:]))
    sd["patch_embed.proj.weight"] = w
    grid = vit.patch_embed.grid_size
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"].float(), list(grid), num_prefix_tokens=1)
    extra = sorted(k for k in sd if k not in target and not k.startswith(("head.", "mask_token", "fc_norm")))
    missing = sorted(k for k in target if k not in sd)
    wrong = [k for k in target if k in sd and sd[k].shape != target[k].shape]
    if missing or wrong or extra:
        raise InitFromError(f"the checkpoint ({_describe(sd)}) does not fit the preset's backbone "
                            f"({_describe(target)}): use --preset vit-s for ViT-S/14, vit-b for ViT-B/14 "
                            f"[missing {missing[:3]}, shape mismatch {wrong[:3]}, unexpected {extra[:3]}]")
    return {k: sd[k].to(target[k].dtype) for k in target}


def load_backbone_weights(vit: nn.Module, model_cfg: ModelConfig) -> str:
    """Load ``model.init-from`` into ``vit`` after the SHA-256 check; returns the file's hash."""
    path = checked_init_file(model_cfg)
    vit.load_state_dict(adapt_state_dict(read_state_dict(path), vit), strict=True)
    return model_cfg.init_sha256


def apply_init_from(model: nn.Module, model_cfg: ModelConfig) -> None:
    """Start an :class:`~xr0_core.ssl.method.XR0SSL` from ``model.init-from`` (student and teacher backbones);
    a no-op when it is empty. Heads stay as initialised (the checkpoint has no DINO/iBOT heads we could use)."""
    if not model_cfg.init_from:
        return
    student = model.student["backbone"]
    load_backbone_weights(student, model_cfg)
    model.teacher["backbone"].load_state_dict(student.state_dict())
