"""Teacher target preparation shared by the DINO and iBOT losses: centering and sharpening.

Two ways to move the center (``ssl.centering``):

- ``"ema"`` (DINO): after every step, ``center <- m * center + (1 - m) * mean(teacher logits of the batch)``.
  The targets of the *next* steps then depend on other samples' raw teacher outputs: the objective is
  **batch-coupled across steps**, which sample-level DP does not account for (D3).
- ``"frozen-per-round"``: the center stays fixed while a site trains; the loop only *accumulates* the
  teacher-logit sum and count (:meth:`TeacherCentering.accumulate_center_stats`); at a round boundary the
  owner calls :meth:`TeacherCentering.commit_center`, optionally with a mean aggregated across sites. Within
  a round each sample's target depends only on that sample and a constant: per-sample separable (D5).
- ``"sinkhorn"`` (DINOv2's default): no center; targets are the Sinkhorn-Knopp equipartition of the
  teacher logits over the batch (3 iterations). Strongly **batch-coupled** (every target depends on the
  whole batch), and the most robust against collapse in short runs.
"""

from __future__ import annotations

import torch
from torch import nn

CENTERING_MODES = ("ema", "frozen-per-round", "sinkhorn")


class TeacherCentering(nn.Module):
    """Center over the last dim of teacher logits, plus the round statistics for frozen-per-round mode.

    Parameters
    ----------
    dim : int
        Number of prototypes K.
    momentum : float
        Center EMA momentum m (``ssl.center-momentum``).
    mode : str
        ``"ema"`` or ``"frozen-per-round"``.

    Buffers (site state, never shared): ``center [K]``, ``stat_sum [K]`` (float64), ``stat_count []``.
    """

    def __init__(self, dim: int, momentum: float = 0.9, mode: str = "ema") -> None:
        super().__init__()
        if mode not in CENTERING_MODES:
            raise ValueError(f"centering mode {mode!r} unknown; use one of {', '.join(CENTERING_MODES)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"center momentum must be in [0, 1), got {momentum}")
        self.mode = mode
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("stat_sum", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("stat_count", torch.zeros((), dtype=torch.float64))

    @property
    def target_coupling(self) -> str:
        """Coupling of the teacher targets: ``"batch"`` in ema mode, ``"per-sample"`` in frozen-per-round."""
        return "per-sample" if self.mode == "frozen-per-round" else "batch"

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets ``softmax((t - center) / T_t)`` (or Sinkhorn-Knopp in that mode), float32.

        Shapes: ``[..., K] -> [..., K]``.
        """
        if self.mode == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, teacher_temp)
        return torch.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA mode: move the center toward the mean teacher logit of this batch ``[..., K]``."""
        if self.mode != "ema":
            raise RuntimeError(f"update_center is for ssl.centering = ema, not {self.mode}")
        batch_center = teacher_logits.detach().float().reshape(-1, self.center.numel()).mean(dim=0)
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def accumulate_center_stats(self, teacher_logits: torch.Tensor) -> None:
        """Frozen-per-round mode: add this batch's teacher logits ``[..., K]`` to the round statistics."""
        flat = teacher_logits.detach().to(torch.float64).reshape(-1, self.center.numel())
        self.stat_sum.add_(flat.sum(dim=0))
        self.stat_count.add_(flat.shape[0])

    @torch.no_grad()
    def commit_center(self, mean: torch.Tensor | None = None) -> None:
        """Round boundary: set the center to ``mean`` (e.g. aggregated across sites) or to the mean of the
        accumulated statistics, then clear them. Without statistics and without ``mean`` nothing changes.

        The center is *replaced*, not EMA-updated: the round mean already averages many batches, and with a
        handful of rounds an EMA at m = 0.9 would barely move.
        """
        if mean is None:
            if float(self.stat_count) == 0:
                return
            mean = self.stat_sum / self.stat_count
        mean = torch.as_tensor(mean, dtype=self.center.dtype, device=self.center.device).reshape(-1)
        if mean.numel() != self.center.numel():
            raise ValueError(f"center mean has {mean.numel()} entries, expected {self.center.numel()}")
        self.center.copy_(mean)
        self.stat_sum.zero_()
        self.stat_count.zero_()


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Equipartition targets: rows sum to 1, prototypes used equally over the rows of the batch.

    Shapes: ``[..., K] -> [..., K]`` (all leading dims flattened into one batch of rows).

    References: Caron et al., SwAV (2020); ``dinov2/loss/dino_clstoken_loss.py: sinkhorn_knopp_teacher``.
    """
    shape = teacher_logits.shape
    logits = teacher_logits.detach().float().reshape(-1, shape[-1])
    if logits.shape[0] == 0:
        return logits.reshape(shape)
    q = torch.exp((logits - logits.max()) / teacher_temp).t()  # [K, R]; max-shift for stability
    k, r = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(dim=1, keepdim=True).clamp_min(1e-30)
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)
        q /= r
    return (q * r).t().reshape(shape)


class CenteredTargetLoss(nn.Module):
    """Base of the self-distillation losses: owns a :class:`TeacherCentering` and exposes its teacher-side
    target preparation next to the loss (DINOv2 style), so DINO and iBOT differ only in ``forward``."""

    coupling = "per-sample"

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema") -> None:
        super().__init__()
        self.student_temp = student_temp
        self.centering = TeacherCentering(out_dim, center_momentum, centering)

    @property
    def target_coupling(self) -> str:
        return self.centering.target_coupling

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher targets (float32, no grad), same leading shape as ``teacher_logits``."""
        return self.centering.softmax_center_teacher(teacher_logits, teacher_temp)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        self.centering.update_center(teacher_logits)

    @torch.no_grad()
    def accumulate_center_stats(self, teacher_logits: torch.Tensor) -> None:
        self.centering.accumulate_center_stats(teacher_logits)

    @torch.no_grad()
    def commit_center(self, mean: torch.Tensor | None = None) -> None:
        self.centering.commit_center(mean)
