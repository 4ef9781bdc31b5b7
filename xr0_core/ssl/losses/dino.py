"""DINO self-distillation loss on the CLS token (D5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xr0_core.ssl.losses.registry import LOSSES
from xr0_core.ssl.losses.centering import CenteredTargetLoss


@LOSSES.register("dino")
class DINOLoss(CenteredTargetLoss):
    """Cross-entropy between centred, sharpened teacher targets and student predictions over views.

    For every sample: ``mean over pairs (g, v), v != g`` of ``-sum_k p_t[g, k] * log_softmax(s[v] / T_s)[k]``
    where ``p_t[g] = softmax((t[g] - center) / T_t)`` for the G global views seen by the teacher and the
    student views are ordered ``[global_0 .. global_{G-1}, local_0 ..]`` (student view g *is* teacher view g,
    so the pair is skipped: predicting a view from itself teaches nothing).

    Shapes:
        student_logits ``[B, V, K]`` (V = G + L), teacher_probs ``[B, G, K]`` -> loss ``[B]``.

    Coupling: per-sample (given the targets, sample i's loss reads only row i). The *targets* are
    batch-coupled when the center is updated every step from the teacher batch (``centering = "ema"``,
    see :attr:`target_coupling`); with ``"frozen-per-round"`` they are per-sample within a round.

    References:
        Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO, 2021);
        ``dinov2/loss/dino_clstoken_loss.py``.
    """

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        b, v, _ = student_logits.shape
        g = teacher_probs.shape[1]
        if teacher_probs.shape[0] != b or g > v:
            raise ValueError(f"DINOLoss: student {tuple(student_logits.shape)} vs teacher {tuple(teacher_probs.shape)}")
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)  # [B, V, K]
        # ce[b, g, v] = -sum_k p_t[b, g, k] log p_s[b, v, k]
        ce = -torch.einsum("bgk,bvk->bgv", teacher_probs.float(), log_p)
        keep = ~torch.eye(g, v, dtype=torch.bool, device=ce.device)  # drop (g, g) pairs
        n_pairs = int(keep.sum())
        if n_pairs == 0:
            raise ValueError("DINOLoss needs at least two views (one global and one other)")
        return (ce * keep).sum(dim=(1, 2)) / n_pairs
