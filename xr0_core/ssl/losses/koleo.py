"""KoLeo regulariser: spread features uniformly on the sphere (optional in D5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.ssl.losses.registry import LOSSES


@LOSSES.register("koleo")
class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko differential-entropy estimator: ``-log(dist to nearest other sample + eps)``.

    Shapes:
        features ``[B, D]`` (student CLS of one global view; L2-normalised inside) -> loss ``[B]``.

    Coupling: batch (sample i's term is the distance to its nearest neighbour *in the batch*: changing any
    other sample can change it). Refused under sample-level DP (D3).

    References:
        Sablayrolles et al., "Spreading vectors for similarity search" (ICLR 2019);
        ``dinov2/loss/koleo_loss.py``.
    """

    coupling = "batch"

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b = features.shape[0]
        if b < 2:
            raise ValueError("KoLeoLoss needs a batch of at least 2 samples (it is batch-coupled)")
        x = F.normalize(features.float(), dim=-1, p=2, eps=self.eps)
        # Nearest neighbour by max inner product on the sphere (as DINOv2), the sample itself excluded (-2 is
        # below any cosine); the distance is then recomputed with gradients.
        with torch.no_grad():
            sim = x @ x.t()
            sim.fill_diagonal_(-2.0)
            nn_idx = sim.argmax(dim=1)
        dist = F.pairwise_distance(x, x[nn_idx], p=2, eps=self.eps)
        return -torch.log(dist + self.eps)
