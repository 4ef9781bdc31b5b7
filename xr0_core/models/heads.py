"""Projection heads of the SSL objective (D5): DINO head on CLS, a separate iBOT head on patch tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototype layer.

    The prototype layer is DINO's ``weight_norm(Linear(bottleneck, out, bias=False))`` with the gain fixed to
    1 (``norm_last_layer=True``): each prototype row is divided by its norm in ``forward``. Doing it by hand
    (instead of ``torch.nn.utils.weight_norm``, deprecated, or a parametrization, which renames state-dict
    keys) keeps every parameter a plain float tensor named ``prototypes`` in ``state_dict`` -- what a
    Flower ``ArrayRecord`` and FedAvg expect.

    Parameters
    ----------
    in_dim : int
        Backbone embedding size D.
    out_dim : int
        Number of prototypes K.
    hidden_dim, bottleneck_dim : int
    nlayers : int
        Linear layers in the MLP (>= 1); GELU between them.

    Shapes
    ------
    x : [..., D] -> logits [..., K]

    References
    ----------
    Caron et al., DINO (2021), ``dino/vision_transformer.py: DINOHead``; Oquab et al., DINOv2 (2023),
    ``dinov2/layers/dino_head.py``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp(x)
        # eps as DINOv2: a bottleneck of fp16/bf16 zeros must not divide by zero.
        z = F.normalize(z, dim=-1, p=2, eps=1e-6 if z.dtype == torch.float32 else 1e-4)
        return F.linear(z, F.normalize(self.prototypes, dim=-1, p=2))
