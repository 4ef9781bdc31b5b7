"""iBOT masked-patch self-distillation loss (D5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xr0_core.ssl.losses.registry import LOSSES
from xr0_core.ssl.losses.centering import CenteredTargetLoss


@LOSSES.register("ibot")
class iBOTPatchLoss(CenteredTargetLoss):  # noqa: N801 (the paper's spelling)
    """Cross-entropy between teacher and student patch-prototype distributions on masked patch tokens.

    The student sees a global view with some patch embeddings replaced by a mask token; the teacher sees the
    same view unmasked. Only masked tokens are scored. Tokens arrive *gathered* (masked tokens of all samples
    concatenated, M in total) so the heads never run on unmasked tokens; ``token_sample`` says which sample
    each token belongs to. Each sample's loss is the mean over its own masked tokens (across its global views);
    a sample without masked tokens gets 0.

    Shapes:
        student_logits ``[M, K]``, teacher_probs ``[M, K]``, token_sample ``[M]`` (long, in [0, B)),
        batch_size B, weight ``[M]`` (optional: 1 for a real token, 0 for padding) -> loss ``[B]``.

    Coupling: per-sample (each token's term and the per-sample mean read only that sample's tokens). The
    targets are batch-coupled with ``centering = "ema"`` (see :attr:`target_coupling`).

    References:
        Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer" (2022);
        ``dinov2/loss/ibot_patch_loss.py`` (per-image mean over masked tokens).
    """

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, token_sample: torch.Tensor,
                batch_size: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        if student_logits.shape != teacher_probs.shape or student_logits.shape[0] != token_sample.shape[0]:
            raise ValueError(f"iBOTPatchLoss: shapes {tuple(student_logits.shape)}, {tuple(teacher_probs.shape)}, "
                             f"{tuple(token_sample.shape)} do not match")
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        ce = -(teacher_probs.float() * log_p).sum(dim=-1)  # [M]
        w = torch.ones_like(ce) if weight is None else weight.to(ce.dtype)
        total = ce.new_zeros(batch_size).index_add(0, token_sample, ce * w)
        count = ce.new_zeros(batch_size).index_add(0, token_sample, w)
        return total / count.clamp(min=1.0)
