"""Image-report contrastive loss, CLIP InfoNCE with a learnable temperature (mXR-0, D6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.ssl.losses.registry import LOSSES


def match_targets(same: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Row-normalised soft targets ``[n, n]``: identical reports in a batch are not negatives of each other
    (radiology reports repeat: "No acute cardiopulmonary process."); the identity when ``same`` is None."""
    if same is None:
        return torch.eye(n, device=device)
    t = same.float() + torch.eye(n, device=device)  # the diagonal counts even if ``same`` omits it
    t = (t > 0).float()
    return t / t.sum(dim=1, keepdim=True)


@LOSSES.register("clip")
class CLIPLoss(nn.Module):
    """Symmetric InfoNCE between image and report embeddings, temperature ``exp(-logit_scale)``.

    Per sample ``i``: ``0.5 * (CE(image_i -> reports) + CE(report_i -> images))`` with soft targets over
    identical reports.

    Shapes:
        image ``[B, E]``, text ``[B, E]`` (L2-normalised inside), logit_scale scalar or ``[1]`` (log of the inverse
        temperature, learnable, clamped to ``log 100`` as CLIP), same bool ``[B, B]`` optional (identical
        reports) -> loss ``[B]``.

    Coupling: batch (every other report of the batch is a negative of sample i: changing any sample changes
    sample i's loss). Refused under sample-level DP; the per-sample alternative is captioning (D3, D6).

    References:
        Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP, 2021);
        Zhang et al., ConVIRT (2020) for image-report pairs; ``open_clip/loss.py`` (ClipLoss).
    """

    coupling = "batch"
    max_logit_scale = 4.6052  # log(100)

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                same: torch.Tensor | None = None) -> torch.Tensor:
        if image.shape != text.shape or image.ndim != 2:
            raise ValueError(f"image and text embeddings must both be [B, E], got {tuple(image.shape)} and "
                             f"{tuple(text.shape)}")
        b = image.shape[0]
        zi = F.normalize(image.float(), dim=-1)
        zt = F.normalize(text.float(), dim=-1)
        logits = zi @ zt.t() * logit_scale.float().clamp(max=self.max_logit_scale).exp()  # [B, B]
        target = match_targets(same, b, image.device)
        i2t = -(target * logits.log_softmax(dim=1)).sum(dim=1)
        t2i = -(target * logits.t().log_softmax(dim=1)).sum(dim=1)
        return 0.5 * (i2t + t2i)
