"""Readouts: which vector of a frozen ViT a linear probe reads.

The CLS token alone is what the image-level (DINO) objective shapes. DINOv2's linear evaluation reads the CLS
token concatenated with the average patch token; a coarse spatial pooling of the patch tokens keeps *where*
something is, which on a radiograph is much of what it shows (the joint space of a knee is a few patches
wide). On knee-oa-dev (docs/ablations.md) ``cls+grid4`` reads the most for random-init and pretrained
backbones alike, so it is the evaluation suite's default (``eval.readout``).

Names:

- ``cls``: the CLS token ``[D]``;
- ``mean``: the mean patch token ``[D]``;
- ``cls+mean``: both ``[2D]`` (DINOv2's linear evaluation, one block);
- ``cls+grid<k>``: CLS and the patch tokens average-pooled to a ``k x k`` grid ``[(1 + k*k) D]``.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from xr0_core.config import READOUT_NAMES

_GRID = re.compile(r"^cls\+grid([1-9][0-9]?)$")
READOUTS = ("cls", "mean", "cls+mean", "cls+grid2", "cls+grid4")  # the ones the benches compare


def check_readout(name: str) -> str:
    """``name`` when it is a readout this module computes, else a ValueError that lists the valid ones."""
    if READOUT_NAMES.fullmatch(str(name)):
        return name
    raise ValueError(f"readout {name!r}: use cls, mean, cls+mean or cls+grid<k> (e.g. cls+grid4)")


def needs_patches(name: str) -> bool:
    return check_readout(name) != "cls"


def readout_dim(name: str, dim: int) -> int:
    """Length of the readout vector for embedding size ``dim``."""
    name = check_readout(name)
    if name in ("cls", "mean"):
        return dim
    if name == "cls+mean":
        return 2 * dim
    k = int(_GRID.match(name).group(1))
    return (1 + k * k) * dim


def pool_patches(patches: torch.Tensor, name: str) -> torch.Tensor:
    """The patch part of readout ``name``.

    Parameters
    ----------
    patches : Tensor [B, N, D], N = g * g patch tokens in raster order
    name : a readout name (``cls`` gives an empty ``[B, 0]``)

    Returns
    -------
    Tensor [B, P] float32: ``P = 0`` (cls), ``D`` (mean, cls+mean) or ``k*k*D`` (cls+grid<k>).
    """
    name = check_readout(name)
    b, n, d = patches.shape
    x = patches.float()
    if name == "cls":
        return x.new_zeros(b, 0)
    if name in ("mean", "cls+mean"):
        return x.mean(1)
    k = int(_GRID.match(name).group(1))
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"readout {name}: {n} patch tokens are not a square grid")
    if k > g:
        raise ValueError(f"readout {name}: a {k} x {k} grid needs at least {k} patches per side, the model has {g}")
    grid = x.transpose(1, 2).reshape(b, d, g, g)
    # Adaptive average pooling: each cell the mean of a block of patches ([B, D, k, k] -> cell-major order).
    return F.adaptive_avg_pool2d(grid, k).permute(0, 2, 3, 1).reshape(b, k * k * d)


def assemble(cls: torch.Tensor, pooled: torch.Tensor, name: str) -> torch.Tensor:
    """Readout ``name`` from CLS ``[B, D]`` and :func:`pool_patches` output ``[B, P]`` -> ``[B, R]``."""
    name = check_readout(name)
    if name == "cls":
        return cls.float()
    if name == "mean":
        return pooled.float()
    return torch.cat([cls.float(), pooled.float()], dim=1)


def readout(cls: torch.Tensor, patches: torch.Tensor, name: str) -> torch.Tensor:
    """Readout ``name`` of CLS ``[B, D]`` and patch tokens ``[B, N, D]`` -> ``[B, R]`` float32."""
    return assemble(cls, pool_patches(patches, name), name)
