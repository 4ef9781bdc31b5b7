"""Image-to-report captioning loss: token cross-entropy of a decoder conditioned on image tokens (D6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.ssl.losses.registry import LOSSES


@LOSSES.register("caption")
class CaptionLoss(nn.Module):
    """Mean next-token cross-entropy over each report's own tokens (teacher forcing).

    ``logits[:, t]`` predicts ``target[:, t]`` (the caller shifts); positions with ``valid == 0`` (padding)
    do not count, and a sample without any valid position (an image without a report) has loss 0.

    Shapes:
        logits ``[B, T, V]``, target long ``[B, T]``, valid ``[B, T]`` (bool or 0/1) -> loss ``[B]``.

    Coupling: per-sample (sample i's loss depends only on its own image and report), so it runs under
    patient-level DP-SGD; it also trains the decoder that drafts reports.

    References:
        Vinyals et al., "Show and Tell" (2015); Sander et al., "Differentially Private Representation Learning
        via Image Captioning" (DP-Cap, ICML 2024).
    """

    coupling = "per-sample"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3 or target.shape != logits.shape[:2] or valid.shape != target.shape:
            raise ValueError(f"caption loss expects logits [B, T, V], target and valid [B, T]; got "
                             f"{tuple(logits.shape)}, {tuple(target.shape)}, {tuple(valid.shape)}")
        b, t, v = logits.shape
        ce = F.cross_entropy(logits.float().reshape(b * t, v), target.reshape(b * t), reduction="none").reshape(b, t)
        w = valid.float()
        return (ce * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
