"""Image-report contrastive loss, SigLIP's pairwise sigmoid with learnable temperature and bias (D6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.ssl.losses.registry import LOSSES


@LOSSES.register("siglip")
class SigLIPLoss(nn.Module):
    """Every (image, report) pair of the batch is a binary match / no-match problem.

    Per sample ``i``: ``sum_j -log sigmoid(z_ij * (t * <x_i, y_j> + b))`` over the reports ``j`` of the batch,
    ``z_ij = +1`` for its own report (and identical reports), ``-1`` otherwise; ``t = exp(logit_scale)``.

    Shapes:
        image ``[B, E]``, text ``[B, E]`` (L2-normalised inside), logit_scale and logit_bias scalars (or ``[1]``),
        same bool ``[B, B]`` optional -> loss ``[B]``.

    Coupling: batch (the negatives of sample i are the other reports of the batch). Refused under sample-level
    DP; the per-sample alternative is captioning (D3, D6).

    References:
        Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP, ICCV 2023);
        ``open_clip/loss.py`` (SigLipLoss).
    """

    coupling = "batch"

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None, same: torch.Tensor | None = None) -> torch.Tensor:
        if image.shape != text.shape or image.ndim != 2:
            raise ValueError(f"image and text embeddings must both be [B, E], got {tuple(image.shape)} and "
                             f"{tuple(text.shape)}")
        b = image.shape[0]
        zi = F.normalize(image.float(), dim=-1)
        zt = F.normalize(text.float(), dim=-1)
        logits = zi @ zt.t() * logit_scale.float().exp()
        if logit_bias is not None:
            logits = logits + logit_bias.float()
        labels = torch.eye(b, device=image.device, dtype=torch.bool)
        if same is not None:
            labels = labels | same.bool()
        z = labels.float() * 2.0 - 1.0
        return -F.logsigmoid(z * logits).sum(dim=1)
