"""Frozen-backbone features: the one loop that runs a backbone over images without gradient.

Evaluation (:mod:`xr0_core.eval.features`, the task suite), the SSL health probe (:mod:`xr0_core.train.health`) and
the benches all call :func:`frozen_features`; they differ only in which images they feed (letterbox views,
whole resized images) and which patch summary they keep.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from xr0_core.runtime import autocast


@torch.no_grad()
def frozen_features(backbone: nn.Module, n: int, batch: Callable[[int, int], torch.Tensor], *,
                    batch_size: int = 64, device: torch.device | str | None = None, precision: str = "auto",
                    patches: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLS tokens (and a summary of the patch tokens) of ``n`` images, in batches, the backbone in eval mode.

    Parameters
    ----------
    backbone : timm ViT (``forward_features -> [B, 1 + N, D]``, final norm applied)
    n : int
        Number of images.
    batch : callable
        ``batch(start, stop) -> [stop - start, C, S, S]``: the normalised model inputs of images
        ``start .. stop - 1`` (built per batch, so a large set is never held as float32 at once).
    batch_size : int
    device : where the backbone runs (default: where its parameters are)
    precision : ``train.precision`` (bf16 autocast on CUDA with ``auto``)
    patches : callable, optional
        ``patches(tokens [B, N, D]) -> Tensor [B, ...]`` kept per batch (e.g. float16 tokens for dense tasks,
        their mean for a rank estimate); None: CLS only.

    Returns
    -------
    cls : Tensor [n, D] float32 on CPU (not normalised)
    patch_summary : Tensor [n, ...] on CPU, or None
    """
    if device is None:
        device = next(backbone.parameters()).device
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    cls, pat = [], []
    try:
        for start in range(0, n, batch_size):
            x = batch(start, min(n, start + batch_size)).to(device, non_blocking=device.type == "cuda")
            with autocast(device, precision):
                tok = backbone.forward_features(x)
            cls.append(tok[:, 0].float().cpu())
            if patches is not None:
                pat.append(patches(tok[:, 1:]).cpu())
    finally:
        backbone.train(was_training)
    dim = int(getattr(backbone, "embed_dim", 0))
    out_cls = torch.cat(cls) if cls else torch.zeros(0, dim)
    if patches is None:
        return out_cls, None
    return out_cls, (torch.cat(pat) if pat else None)
