"""Exponential moving average of the student into the teacher (D5)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter.

    Buffers (if any) are copied. The two modules must have the same parameter names and shapes; a mismatch
    raises ``ValueError`` instead of silently averaging the wrong tensors.

    Parameters
    ----------
    teacher, student : nn.Module
        Twin modules (e.g. the ``teacher`` and ``student`` ``ModuleDict`` of :class:`XR0SSL`).
    momentum : float
        In [0, 1]; 1 leaves the teacher unchanged, 0 copies the student.

    References
    ----------
    Grill et al., BYOL (2020); Caron et al., DINO (2021), ``main_dino.py`` (EMA update of the teacher).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(s_params) ^ set(t_params))[:5]
        raise ValueError(f"teacher and student parameters differ (e.g. {missing})")
    names = list(t_params)
    for n in names:
        if t_params[n].shape != s_params[n].shape:
            raise ValueError(f"teacher/student shape mismatch at {n}: {tuple(t_params[n].shape)} vs "
                             f"{tuple(s_params[n].shape)}")
    t_list = [t_params[n].data for n in names]
    s_list = [s_params[n].detach().to(t_params[n].dtype) for n in names]
    torch._foreach_mul_(t_list, momentum)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    s_bufs = dict(student.named_buffers())
    for n, buf in teacher.named_buffers():
        if n in s_bufs:
            buf.copy_(s_bufs[n])
