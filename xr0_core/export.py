"""Export the pretrained backbone as timm-compatible safetensors plus a JSON sidecar (D11).

The weights file holds exactly ``timm.create_model(name, **kwargs).state_dict()``'s keys (no mask token, no
heads); the sidecar (``<file>.json``) names the timm architecture, its kwargs and the input normalisation,
so a user needs only timm to load it::

    spec = json.load(open("backbone.json"))
    overlay = {**spec["pretrained_cfg_overlay"], "file": "backbone.safetensors"}
    model = timm.create_model(spec["timm_name"], pretrained=True, pretrained_cfg_overlay=overlay,
                              **spec["timm_kwargs"])

(timm loads a ``file`` overlay from disk, no network.) Or ``load_exported(path)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xr0_core.config import ModelConfig
from xr0_core.data.transforms import PIXEL_MEAN, PIXEL_STD
from xr0_core.models.backbone import backbone_timm_spec

EXPORT_FORMAT = "xr0-backbone/1"


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def export_backbone(backbone: nn.Module, model_cfg: ModelConfig, out_path: str | Path,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_path`` (safetensors, float32) and its sidecar ``out_path.with_suffix('.json')`` atomically.

    Parameters
    ----------
    backbone : timm ViT built by :func:`xr0_core.models.backbone.build_backbone` (the student's)
    model_cfg : ModelConfig
    out_path : path
    extra : dict, optional
        More JSON fields for the sidecar (e.g. steps, config hash).

    Returns
    -------
    dict
        The sidecar content.
    """
    from xr0_core.atomic import atomic_write
    from xr0_core.checkpoint import save_tensors

    spec = backbone_timm_spec(model_cfg)
    # Weights of an inference model: drop-path is a training-time choice, not part of the architecture.
    kwargs = {**spec["kwargs"], "drop_path_rate": 0.0}
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in backbone.state_dict().items()}
    out_path = Path(out_path)
    sidecar = {
        "format": EXPORT_FORMAT,
        "timm_name": spec["name"],
        "timm_kwargs": kwargs,
        "backbone": model_cfg.backbone,
        "input": {"channels": 1, "img_size": model_cfg.img_size, "range": "[0, 1], bright = bone",
                  "normalize_mean": PIXEL_MEAN, "normalize_std": PIXEL_STD},
        "features": "forward_features(x)[:, 0] (CLS after norm)",
        # Declaring 1 input channel and no classifier makes timm load the file strictly and silently.
        "pretrained_cfg_overlay": {"input_size": [1, model_cfg.img_size, model_cfg.img_size], "num_classes": 0,
                                   "mean": [PIXEL_MEAN], "std": [PIXEL_STD]},
        "weights": out_path.name,
        **(extra or {}),
    }
    save_tensors(out_path, sd, header={"format": EXPORT_FORMAT})
    atomic_write(sidecar_path(out_path),
                 lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n"))
    return sidecar


def load_exported(path: str | Path) -> nn.Module:
    """Build the exported backbone with timm from its file overlay (offline) and check every key loaded.

    Raises
    ------
    FileNotFoundError
        Weights or sidecar missing.
    ValueError
        The file does not hold exactly the architecture's keys (timm loads non-strictly when the head
        differs, so this is checked here rather than trusted).
    """
    import timm
    from safetensors import safe_open

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise FileNotFoundError(f"need both {path} and {side}")
    spec = json.loads(side.read_text())
    if spec.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{side} is not an XR-0 backbone export ({spec.get('format')!r})")
    overlay = {**spec.get("pretrained_cfg_overlay", {}), "file": str(path)}
    if "input_size" in overlay:
        overlay["input_size"] = tuple(overlay["input_size"])
    model = timm.create_model(spec["timm_name"], pretrained=True, pretrained_cfg_overlay=overlay,
                              **spec["timm_kwargs"])
    with safe_open(str(path), framework="pt") as f:
        file_keys = set(f.keys())
    model_keys = set(model.state_dict())
    if file_keys != model_keys:
        raise ValueError(f"{path} does not match {spec['timm_name']}: missing "
                         f"{sorted(model_keys - file_keys)[:5]}, unexpected {sorted(file_keys - model_keys)[:5]}")
    return model.eval()
