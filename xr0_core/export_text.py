"""Export mXR-0's text side next to the timm backbone (D11): the text tower as a ``transformers`` folder, the
projections and caption decoder as safetensors, and a sidecar saying how to use them.

Files written into ``out_dir``::

    text_tower/                  config.json, model.safetensors, tokenizer files (AutoModel / AutoTokenizer)
    multimodal_heads.safetensors contrast.* (image_proj, text_proj, logit_scale[, logit_bias]), caption.*
    multimodal.json              format, how to embed an image and a report, the decoder's shape

Loading needs no network (``local_files_only=True``)::

    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained("OUT/text_tower", local_files_only=True)
    bert = AutoModel.from_pretrained("OUT/text_tower", local_files_only=True)

or :func:`load_text_export` (checks the files and returns the projections as modules).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

MULTIMODAL_FORMAT = "xr0-multimodal/1"
TOWER_DIR, HEADS_FILE, SIDECAR = "text_tower", "multimodal_heads.safetensors", "multimodal.json"


def export_text_side(model: Any, out_dir: str | Path, backbone_file: str = "backbone.safetensors") -> dict[str, Any]:
    """Write the text tower, projections and decoder of a :class:`~xr0_core.ssl.multimodal.MultimodalXR0`.

    Returns
    -------
    dict
        The sidecar content.
    """
    from xr0_core.atomic import atomic_folder, atomic_write
    from xr0_core.checkpoint import save_tensors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write_tower(tmp: Path) -> None:
        model.student["text"].save_pretrained(str(tmp), safe_serialization=True)
        model.tokenizer.save_pretrained(str(tmp))

    atomic_folder(out / TOWER_DIR, write_tower)
    heads = {f"{name}.{k}": v.detach().to("cpu", torch.float32)
             for name in ("contrast", "caption") for k, v in model.student[name].state_dict().items()}
    save_tensors(out / HEADS_FILE, heads, header={"format": MULTIMODAL_FORMAT})
    dec = model.student["caption"]
    sidecar = {
        "format": MULTIMODAL_FORMAT,
        "backbone": backbone_file,
        "text_tower": TOWER_DIR,
        "heads": HEADS_FILE,
        "text_sharing": model.sharing,
        "contrastive": model.contrastive,
        "proj_dim": int(model.student["contrast"].image_proj.out_features),
        "max_tokens": int(model.max_tokens),
        "image_embedding": "contrast.image_proj(backbone.forward_features(x)[:, 0])",
        "text_embedding": "contrast.text_proj(masked mean of AutoModel(...).last_hidden_state)",
        "similarity": "cosine of the two embeddings; scale exp(contrast.logit_scale)",
        "caption": {"class": "xr0_core.models.caption.CaptionDecoder", "width": int(dec.embed.out_features),
                    "layers": len(dec.decoder.layers), "max_len": int(dec.max_len),
                    "memory": "backbone.forward_features(x) (CLS + patch tokens)",
                    "words": "text tower input embeddings (tied)"},
    }
    atomic_write(out / SIDECAR, lambda p: p.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n"))
    return sidecar


class TextExport(nn.Module):
    """What :func:`load_text_export` returns: ``tokenizer``, ``text`` (transformers model), ``image_proj``,
    ``text_proj``, ``logit_scale``, and the raw ``heads`` state dict."""

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Projected report embeddings ``[B, E]`` (L2-normalised)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        with torch.no_grad():
            h = self.text(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            return nn.functional.normalize(self.text_proj((h * m).sum(1) / m.sum(1).clamp_min(1.0)), dim=-1)


def load_text_export(out_dir: str | Path) -> TextExport:
    """Load an export written by :func:`export_text_side` with ``transformers`` only, offline.

    Raises
    ------
    FileNotFoundError
        The sidecar, the tower folder or the heads file is missing (named).
    """
    from safetensors.torch import load_file

    from xr0_core.models.text import load_text_encoder

    out = Path(out_dir)
    for p in (out / SIDECAR, out / TOWER_DIR, out / HEADS_FILE):
        if not p.exists():
            raise FileNotFoundError(f"multimodal export incomplete: {p} is missing")
    spec = json.loads((out / SIDECAR).read_text())
    if spec.get("format") != MULTIMODAL_FORMAT:
        raise ValueError(f"{out / SIDECAR} is not an XR-0 multimodal export ({spec.get('format')!r})")
    tokenizer, text = load_text_encoder(out / TOWER_DIR)
    heads = load_file(str(out / HEADS_FILE))
    e = TextExport()
    e.tokenizer, e.text, e.heads, e.max_tokens = tokenizer, text.eval(), heads, int(spec["max_tokens"])
    w = heads["contrast.image_proj.weight"]
    e.image_proj = nn.Linear(w.shape[1], w.shape[0])
    e.image_proj.load_state_dict({"weight": w, "bias": heads["contrast.image_proj.bias"]})
    w = heads["contrast.text_proj.weight"]
    e.text_proj = nn.Linear(w.shape[1], w.shape[0])
    e.text_proj.load_state_dict({"weight": w, "bias": heads["contrast.text_proj.bias"]})
    e.logit_scale = float(heads["contrast.logit_scale"])
    return e


def export_multimodal_from_shared(cfg: Any, shared: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """The coordinator's end of an mXR-0 run: build the model from the final shared weights, export its text
    side into ``out_dir`` and return ``{"sharing": bytes per round per text-sharing mode, "export": sidecar}``
    for ``run.json`` and the report."""
    import numpy as np

    from xr0_core.ssl.factory import build_model

    model = build_model(cfg)
    model.load_shared_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in shared.items()})
    sidecar = export_text_side(model, out_dir)
    return {**model.sharing_report().to_json(), "export": sidecar}
