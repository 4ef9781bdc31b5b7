"""Data-parallel local training across a site's GPUs with ``torch.distributed`` (D16).

A site's round on ``W`` processes (``torchrun --nproc_per_node W``, one per GPU; gloo on CPU for tests) trains
the same weights as one process on the same global batch:

- every rank draws the *global* batch of the step from ``(seed, site, step)`` (the same indices, views and masks
  as a single process) and keeps its contiguous block of ``B / W`` images;
- after ``backward`` the gradients are averaged over ranks in one coalesced all-reduce (the mean over the
  global batch: each rank's loss is the mean over its equal share), before clipping and the optimizer, so
  every rank applies the identical update and the teacher EMA stays identical without communication;
- frozen-per-round center statistics are summed over ranks before they are committed;
- metrics are averaged over ranks when they reach the host (every K steps, :mod:`xr0_core.train.loop`).

What is *not* the same as one process, and so documented rather than hidden: batch-coupled terms (Sinkhorn-Knopp
targets, EMA centering, KoLeo) see the rank's share of the batch, not the global batch; drop-path draws its masks
per rank. The equivalence test uses the per-sample objective (``ssl.centering = frozen-per-round``, no KoLeo,
no drop-path), which is also the DP objective.

DP-SGD across ranks is refused for now: the mechanism needs each rank's sum of clipped per-unit gradients
all-reduced and ONE noise draw for the global batch (:func:`refuse_private`); running Opacus per rank would add
noise W times with the wrong scale.

References: Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training" (VLDB 2020);
``torch.nn.parallel.DistributedDataParallel`` (which also averages gradients by all-reduce).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch


@dataclass(frozen=True)
class DistContext:
    """This process's place in the site's data-parallel group."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(backend: str | None = None) -> DistContext | None:
    """Join the group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...); None for one process.

    ``backend`` default: nccl when CUDA is visible, else gloo. On CUDA each rank uses ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` under torchrun with CUDA, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard_batch(batch: Mapping[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """This rank's contiguous block of a global batch (all tensors have the batch first).

    Raises
    ------
    ValueError
        The global batch size is not a multiple of the world size (shares must be equal for the mean of means
        to be the global mean).
    """
    n = next(iter(batch.values())).shape[0]
    if n % ctx.world_size:
        raise ValueError(f"train.batch-size {n} must be a multiple of the {ctx.world_size} GPUs of the site")
    per = n // ctx.world_size
    return {k: v[ctx.rank * per:(ctx.rank + 1) * per] for k, v in batch.items()}


def average_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """Mean of each gradient over ranks, in one coalesced all-reduce (missing grads count as zero)."""
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def sum_center_stats(model: torch.nn.Module, ctx: DistContext) -> None:
    """Sum frozen-per-round center statistics (``*.stat_sum``, ``*.stat_count`` buffers) over ranks."""
    import torch.distributed as dist

    for name, buf in model.named_buffers():
        if name.endswith(("stat_sum", "stat_count")):
            dist.all_reduce(buf)


def mean_metrics(metrics: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Average float metrics over ranks (one all-reduce)."""
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(keys, (values / ctx.world_size).tolist()))


def refuse_private(cfg) -> None:
    """DP-SGD is not implemented across ranks (see the module docstring): refuse with the reason."""
    if cfg.privacy.enabled:
        raise RuntimeError("DP-SGD across several GPUs of a site is not implemented: it needs the ranks' sums of "
                           "clipped per-unit gradients all-reduced and one noise draw for the global batch. Train "
                           "this site on one GPU (gpus = 1) with privacy.enabled, or without DP on several GPUs")
