"""Client-level DP: clip a site's whole update and add Gaussian noise before anything leaves (D3).

The unit here is the hospital: neighbouring datasets differ in *all* of one site's data. Because a change of
one patient is such a change, a client-level release with noise multiplier sigma_c is also a patient-level
Gaussian mechanism with sensitivity C; the ledger records it (kind ``client``, q = 1, one step) and the
patient-level epsilon composes it with the DP-SGD steps.

Each site adds the full noise ``N(0, (sigma_c C)^2)`` itself, also under secure aggregation: its guarantee
then holds whatever the other sites do or whether they drop out (a split of the noise over n sites,
sigma_c / sqrt(n) each, needs all n to be honest and present; docs/secure-aggregation.md).

References: McMahan et al., "Learning Differentially Private Recurrent Language Models" (DP-FedAvg, 2018);
Flower ``DifferentialPrivacyClientSideFixedClipping`` (``compute_clip_model_update``).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch


def update_norm(update: Mapping[str, torch.Tensor]) -> float:
    """Global L2 norm over all tensors of ``update``."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))


def clip_update_inplace(update: dict[str, torch.Tensor], clip: float) -> float:
    """Scale ``update`` (mutated) so its global L2 norm is at most ``clip``; returns the norm before."""
    norm = update_norm(update)
    if norm > clip:
        scale = clip / (norm + 1e-12)
        for v in update.values():
            v.mul_(scale)
    return norm


def client_level_release(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor], *, clip: float,
                         noise_multiplier: float, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], float]:
    """``old + clip(new - old, C) + N(0, (sigma_c C)^2)`` per coordinate (float32, CPU).

    Returns
    -------
    weights : dict name -> Tensor
        What the site sends instead of ``new``.
    norm : float
        The update's norm before clipping (stays at the site; it is data-dependent).
    """
    update = {k: new[k].detach().double().cpu() - old[k].detach().double().cpu() for k in new}
    norm = clip_update_inplace(update, clip)
    out = {}
    for k, u in update.items():
        noise = torch.normal(0.0, noise_multiplier * clip, size=u.shape, generator=generator, dtype=torch.float64)
        out[k] = (old[k].detach().double().cpu() + u + noise).float()
    return out, norm
