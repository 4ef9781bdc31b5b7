"""Schedules precomputed as arrays indexed by the global step (D5; DINOv2 ``train.py`` style).

The global step continues across federated rounds, so a site that trains steps 40..59 of a 60-step run
reads ``schedules.lr[40:60]``; a step past the end clamps to the last value (extra rounds train at the
final lr / momentum instead of failing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xr0_core.config import XR0Config


def cosine(start: float, end: float, n: int) -> np.ndarray:
    """``n`` values from ``start`` to ``end`` along a half cosine (``start`` at 0, ``end`` at n - 1)."""
    if n <= 0:
        return np.zeros(0)
    if n == 1:
        return np.array([start], dtype=np.float64)
    t = np.arange(n) / (n - 1)
    return end + 0.5 * (start - end) * (1.0 + np.cos(np.pi * t))


def warmup_cosine(peak: float, final: float, total: int, warmup: int, start: float = 0.0) -> np.ndarray:
    """Linear warmup ``start -> peak`` over ``warmup`` steps, then cosine ``peak -> final``."""
    warmup = min(max(warmup, 0), total)
    ramp = np.linspace(start, peak, warmup, endpoint=False) if warmup else np.zeros(0)
    return np.concatenate([ramp, cosine(peak, final, total - warmup)])


@dataclass(frozen=True)
class Schedules:
    """Per-step hyper-parameters; every array has length ``total_steps``.

    Attributes
    ----------
    lr : learning rate (linear warmup, then cosine to ``train.min-lr``); peak ``train.lr * batch / 256``.
    wd : weight decay, cosine ``train.weight-decay -> train.weight-decay-end``.
    momentum : teacher EMA momentum, cosine ``ssl.momentum-start -> ssl.momentum-end`` (1.0).
    teacher_temp : linear ``ssl.teacher-temp-warmup -> ssl.teacher-temp`` over the warmup share, then flat.

    References
    ----------
    Caron et al., DINO (2021), ``utils.cosine_scheduler``; ``dinov2/train/train.py: build_schedulers``.
    """

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def build(cls, cfg: XR0Config, total_steps: int) -> "Schedules":
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        t, s = cfg.train, cfg.ssl
        peak = t.lr * t.batch_size / 256.0  # DINO's linear scaling rule
        lr = warmup_cosine(peak, t.min_lr, total_steps, int(round(t.warmup_frac * total_steps)))
        wd = cosine(t.weight_decay, t.weight_decay_end, total_steps)
        momentum = cosine(s.momentum_start, s.momentum_end, total_steps)
        n_temp = min(int(round(s.teacher_temp_warmup_frac * total_steps)), total_steps)
        temp = np.concatenate([
            np.linspace(s.teacher_temp_warmup, s.teacher_temp, n_temp) if n_temp else np.zeros(0),
            np.full(total_steps - n_temp, s.teacher_temp),
        ])
        return cls(lr=lr, wd=wd, momentum=momentum, teacher_temp=temp)

    @property
    def total_steps(self) -> int:
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        """The four values at ``step`` (clamped to ``[0, total_steps - 1]``)."""
        i = min(max(int(step), 0), self.total_steps - 1)
        return {"lr": float(self.lr[i]), "wd": float(self.wd[i]), "momentum": float(self.momentum[i]),
                "teacher_temp": float(self.teacher_temp[i])}
