"""mXR-0: the XR-0 image objective plus image-report terms through a BERT text tower (D6).

:class:`MultimodalXR0` extends :class:`~xr0_core.ssl.method.XR0SSL` (same student / teacher, same DINO +
iBOT (+ KoLeo) per-sample image losses) with, in the student:

- ``text``: a pretrained BERT (:func:`xr0_core.models.text.load_text_encoder`), in eval mode (no dropout);
  which of its parameters train and travel is the **text-sharing mode** (:data:`SHARING_MODES`);
- ``contrast``: image and text projections to a shared ``proj-dim`` space and the learnable temperature
  (and SigLIP bias): the CLIP / SigLIP term (batch-coupled: refused under sample-level DP);
- ``caption``: a small decoder from the image tokens to the report (:mod:`xr0_core.models.caption`), with
  word embeddings tied to the tower's: the per-sample term that runs under patient-level DP (DP-Cap).

The teacher stays image-only (the EMA covers the image student). An image without a report contributes only
to the image losses; its text terms are 0 and put no gradient on the text side. Which tensors leave a site
is :meth:`MultimodalXR0.shared_state_dict`: exactly the trainable parameters (frozen tower weights are the
same file at every site and never travel) plus the image-side tensors XR-0 always ships.

Image tokens for both terms come from the student's first global view (the same forward pass as DINO /
iBOT, so multimodal costs one text forward and the decoder, not another image pass).
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.config import XR0Config
from xr0_core.models.caption import CaptionDecoder
from xr0_core.ssl.losses import load_all
from xr0_core.ssl.method import SSLOutput, XR0SSL

SHARING_MODES = ("all", "top-k", "projection", "frozen")
TEXT, CONTRAST, CAPTION = "text", "contrast", "caption"
_LAYER = re.compile(r"(?:^|\.)(?:encoder\.)?layers?\.(\d+)\.")


def dp_refusal(cfg: XR0Config) -> str | None:
    """Why ``cfg`` cannot run under sample-level DP (None: it can). Read by xr0_core/privacy/dp.py."""
    mm = cfg.multimodal
    if mm.enabled and mm.contrastive != "none" and mm.contrastive_weight > 0:
        return (f"DP mode refuses the image-report contrastive term (multimodal.contrastive = {mm.contrastive!r}, "
                "weight > 0): every other report in the batch is a negative of each image, so one patient's "
                "gradient depends on other patients. DP-compatible alternative: image-to-report captioning, "
                "which is per-sample: set multimodal.contrastive = \"none\" (or multimodal.contrastive-weight = 0) "
                "and multimodal.caption-weight > 0")
    return None


@functools.lru_cache(maxsize=2)
def _pretrained(path: str):
    """(tokenizer, model) loaded once per process and folder; callers deep-copy the model."""
    from xr0_core.models.text import load_text_encoder

    return load_text_encoder(path or None)


def text_layer_index(name: str) -> int | None:
    """Transformer layer number in a text-tower parameter name (``encoder.layer.5.attention...`` -> 5)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


class ContrastiveHead(nn.Module):
    """Linear projections of the image CLS ``[B, D]`` and the pooled text ``[B, d]`` to ``[B, E]``, and the
    log inverse temperature (CLIP: log(1/0.07); SigLIP: log 10 with bias -10, as the papers)."""

    def __init__(self, image_dim: int, text_dim: int, proj_dim: int, kind: str) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, proj_dim)
        self.text_proj = nn.Linear(text_dim, proj_dim)
        init = math.log(10.0) if kind == "siglip" else math.log(1 / 0.07)
        # Shape [1], not a 0-d scalar: Flower's ArrayRecord returns 0-d arrays as [1].
        self.logit_scale = nn.Parameter(torch.tensor([init]))
        self.logit_bias = nn.Parameter(torch.tensor([-10.0])) if kind == "siglip" else None


@dataclass(frozen=True)
class SharingReport:
    """Bytes one site uploads per round (float32), image side and text side per sharing mode."""

    mode: str
    top_k: int
    image_bytes: int
    text_bytes: dict[str, int]

    def to_json(self) -> dict:
        return {"text_sharing": self.mode, "text_top_k": self.top_k, "image_bytes": self.image_bytes,
                "text_bytes": dict(self.text_bytes),
                "total_bytes": {m: self.image_bytes + b for m, b in self.text_bytes.items()},
                "bytes_per_round": self.image_bytes + self.text_bytes[self.mode]}

    def lines(self) -> list[str]:
        mb = 1 / 2 ** 20
        out = [f"upload per site per round: image side {self.image_bytes * mb:.2f} MiB; text side by "
               f"multimodal.text-sharing (chosen: {self.mode}):"]
        for m, b in self.text_bytes.items():
            label = f"top-k (k={self.top_k})" if m == "top-k" else m
            out.append(f"  {label:<14} text {b * mb:8.2f} MiB   total {(self.image_bytes + b) * mb:8.2f} MiB"
                       + ("   <- chosen" if m == self.mode else ""))
        return out


class MultimodalXR0(XR0SSL):
    """XR-0 image SSL + image-report contrastive and captioning terms.

    Parameters
    ----------
    cfg : XR0Config
        ``cfg.multimodal`` (text encoder folder, sharing mode, weights, sizes) on top of XR-0's.

    Attributes
    ----------
    tokenizer : the tower's fixed tokenizer
    coupling : "batch" with an active contrastive term, else XR-0's coupling
    dp_grad_sample_mode : "microbatch" -- DP computes per-unit gradients one unit at a time (exact for the
        text tower and decoder; the vmap route maps the image loss only)
    """

    dp_grad_sample_mode = "microbatch"

    def __init__(self, cfg: XR0Config) -> None:
        super().__init__(cfg)  # image student + teacher (the teacher is copied before text modules exist)
        mm = cfg.multimodal
        if mm.text_sharing not in SHARING_MODES:
            raise ValueError(f"unknown text-sharing mode {mm.text_sharing!r}; known: {', '.join(SHARING_MODES)}")
        losses = load_all()
        tokenizer, pretrained = _pretrained(mm.text_encoder)
        self.tokenizer = tokenizer
        text = copy.deepcopy(pretrained)
        dim = self.student["backbone"].embed_dim
        tdim = int(text.config.hidden_size)
        self.student[TEXT] = text
        self.student[CONTRAST] = ContrastiveHead(dim, tdim, mm.proj_dim, mm.contrastive)
        self.student[CAPTION] = CaptionDecoder(dim, int(text.get_input_embeddings().weight.shape[1]),
                                               mm.caption_width, mm.caption_layers, mm.max_tokens)
        self.contrastive = mm.contrastive if mm.contrastive_weight > 0 else "none"
        self.contrastive_loss = losses.get(self.contrastive)() if self.contrastive != "none" else None
        self.caption_loss = losses.get("caption")() if mm.caption_weight > 0 else None
        self.weights.update({"contrastive": mm.contrastive_weight, "caption": mm.caption_weight})
        self.sharing, self.top_k = mm.text_sharing, mm.text_top_k
        self.max_tokens = mm.max_tokens
        self._apply_sharing()

    # ------------------------------------------------------------------ sharing modes
    def _text_trainable(self, mode: str) -> set[str]:
        """Names (``text.*`` / ``contrast.text_proj.*``) of the text-side parameters that train in ``mode``."""
        text = {f"{TEXT}.{n}" for n, _ in self.student[TEXT].named_parameters()}
        proj = {f"{CONTRAST}.text_proj.{n}" for n, _ in self.student[CONTRAST].text_proj.named_parameters()}
        if mode == "all":
            return text | proj
        if mode == "projection":
            return proj
        if mode == "frozen":
            return set()
        layers = sorted({i for n in text if (i := text_layer_index(n)) is not None})
        if not layers:
            raise ValueError("multimodal.text-sharing = top-k needs a text tower with numbered layers "
                             "(encoder.layer.N); use all, projection or frozen")
        if self.top_k > len(layers):
            raise ValueError(f"multimodal.text-top-k = {self.top_k} but the text tower has {len(layers)} layers")
        top = set(layers[-self.top_k:])
        return {n for n in text if text_layer_index(n) in top} | proj

    def _text_side(self) -> set[str]:
        return ({f"{TEXT}.{n}" for n, _ in self.student[TEXT].named_parameters()}
                | {f"{CONTRAST}.text_proj.{n}" for n, _ in self.student[CONTRAST].text_proj.named_parameters()})

    def _apply_sharing(self) -> None:
        trainable = self._text_trainable(self.sharing)
        text_side = self._text_side()
        for name, p in self.student.named_parameters():
            if name in text_side:
                p.requires_grad_(name in trainable)
        self._tower_frozen = not any(n.startswith(f"{TEXT}.") for n in trainable)
        # Stays at the site (never in the shared set): frozen text-side weights and the tower's buffers.
        self._private = (text_side - trainable) | {f"{TEXT}.{n}" for n, _ in
                                                            self.student[TEXT].named_buffers()}

    def sharing_report(self) -> SharingReport:
        """Upload bytes per round for every sharing mode (float32; computed from this model's shapes)."""
        numel = {n: p.numel() for n, p in self.student.named_parameters()}
        text_side = self._text_side()
        image = sum(v.numel() for k, v in self.student.state_dict().items()
                    if k not in text_side and not k.startswith(f"{TEXT}.")) + self.mask_token.numel()
        per_mode = {}
        for mode in SHARING_MODES:
            try:
                per_mode[mode] = 4 * sum(numel[n] for n in self._text_trainable(mode))
            except ValueError:  # top-k on a tower without numbered layers
                continue
        return SharingReport(self.sharing, self.top_k, 4 * image, per_mode)

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "MultimodalXR0":
        super().train(mode)
        self.student[TEXT].eval()  # no dropout in the tower: the same report always encodes the same way
        return self

    @property
    def coupling(self) -> str:
        if self.contrastive_loss is not None:
            return "batch"
        return super().coupling

    def _image_student(self) -> nn.ModuleDict:
        return nn.ModuleDict({k: self.student[k] for k in self.teacher.keys()})

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        from xr0_core.models.ema import ema_update_

        ema_update_(self.teacher, self._image_student(), momentum)

    @torch.no_grad()
    def reset_teacher_from_student(self) -> None:
        self.teacher.load_state_dict(self._image_student().state_dict())

    # ------------------------------------------------------------------ text and image embeddings
    @property
    def word_embeddings(self) -> torch.Tensor:
        """The tower's input embedding table ``[V, d]`` (trainable only in ``all`` mode)."""
        return self.student[TEXT].get_input_embeddings().weight

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Projected report embeddings ``[R, E]`` (not normalised): masked mean of the tower's last states
        (the pooling MiniLM was trained with), then the text projection."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._tower_frozen):
            h = self.student[TEXT](input_ids=ids, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.student[CONTRAST].text_proj(pooled.float())

    def encode_image(self, cls: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings ``[B, E]`` from CLS tokens ``[B, D]``."""
        return self.student[CONTRAST].image_proj(cls.float())

    def contrastive_terms(self, image: torch.Tensor, text: torch.Tensor, same: torch.Tensor | None) -> torch.Tensor:
        head = self.student[CONTRAST]
        if self.contrastive == "siglip":
            return self.contrastive_loss(image, text, head.logit_scale, head.logit_bias, same)
        return self.contrastive_loss(image, text, head.logit_scale, same)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Mapping[str, torch.Tensor], teacher_temp: float) -> SSLOutput:
        """XR-0 per-sample losses plus ``contrastive`` / ``caption`` parts (0 for images without a report).

        Parameters
        ----------
        batch : dict
            XR-0's keys, plus ``report_ids`` long [B, T], ``report_mask`` bool [B, T], ``has_report`` bool [B]
            (:class:`xr0_core.data.reports.ReportBatches`). Without them the step is image-only.
        """
        out = super().forward(batch, teacher_temp)
        if "report_ids" not in batch:
            return out
        has = batch["has_report"].bool()
        b = has.shape[0]
        rows = torch.nonzero(has).flatten()
        tokens = out.student_tokens[:, 0]  # [B, 1+N, D] of the first global view
        zero = out.loss.new_zeros(b, dtype=torch.float32)
        ids, mask = batch["report_ids"][rows], batch["report_mask"][rows].bool()
        if self.contrastive_loss is not None:
            part = zero
            if rows.numel():
                same = (ids[:, None, :] == ids[None, :, :]).all(-1)  # identical reports are not negatives
                terms = self.contrastive_terms(self.encode_image(tokens[rows, 0]), self.encode_text(ids, mask), same)
                part = zero.index_put((rows,), terms.float())
            out.parts["contrastive"] = part
        if self.caption_loss is not None:
            part = zero
            if rows.numel():
                logits = self.student[CAPTION](tokens[rows], ids[:, :-1], self.word_embeddings)
                terms = self.caption_loss(logits, ids[:, 1:], mask[:, 1:])
                part = zero.index_put((rows,), terms.float())
            out.parts["caption"] = part
        out.loss = out.loss + sum(self.weights[k] * out.parts[k] for k in ("contrastive", "caption")
                                  if k in out.parts)
        return out

    # ------------------------------------------------------------------ state
    def shared_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in super().shared_state_dict().items() if k not in self._private}

    def shared_keys(self) -> dict[str, tuple[int, ...]]:
        return {k: v for k, v in super().shared_keys().items() if k not in self._private}


def text_shared_names(model: nn.Module) -> list[str]:
    """Shared keys that belong to the text side (for reports and tests)."""
    return sorted(k for k in model.shared_keys() if k.startswith((f"{TEXT}.", f"{CONTRAST}.text_proj.")))
