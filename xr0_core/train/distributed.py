"""Data-parallel local training across a site's GPUs with ``torch.distributed`` (D16).

A site's round on ``W`` processes (``torchrun --nproc_per_node W``, one per GPU; gloo on CPU for tests) trains
the same weights as one process on the same global batch:

- every rank draws the *global* batch indices of the step from ``(seed, site, step)`` (the same as a single
  process) and builds views and masks only for its contiguous block of ``B / W`` images (:class:`RankBlocks`;
  views are keyed by image and repeat, so the block equals those rows of the global batch);
- after ``backward`` the gradients are averaged over ranks in one coalesced all-reduce (the mean over the
  global batch: each rank's loss is the mean over its equal share), before clipping and the optimizer, so
  every rank applies the identical update and the teacher EMA stays identical without communication;
- frozen-per-round center statistics are summed over ranks before they are committed;
- metrics are averaged over ranks when they reach the host (every K steps, :mod:`xr0_core.train.loop`).

What is *not* the same as one process, and so documented rather than hidden: batch-coupled terms (Sinkhorn-Knopp
targets, EMA centering, KoLeo) see the rank's share of the batch, not the global batch; drop-path draws its masks
per rank. The equivalence test uses the per-sample objective (``ssl.centering = frozen-per-round``, no KoLeo,
no drop-path), which is also the DP objective.

DP-SGD across ranks (:class:`xr0_core.train.stepper.DPStep` with ``dist``) is the same mechanism as
one process: every rank draws the same secret Poisson sample of units (the sampler's seed and the round's view
secret are rank 0's, broadcast once per round), keeps its contiguous share of the sampled units
(:func:`unit_share`: whole units, shares may differ by one, a share may be empty), clips and sums its units'
gradients; rank 0 adds the ONE Gaussian noise draw to its partial sum and a single all-reduce SUM
(:func:`all_reduce_sum_`) gives every rank ``sum of clipped unit gradients + noise``, divided by the same
expected batch size ``q * n_units`` as one process. The accountant sees one mechanism (q, sigma, steps); the
ledger is reserved and committed once per site, by the process that launched the ranks
(:mod:`xr0_core.site.launch.parallel`).

References: Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training" (VLDB 2020);
``torch.nn.parallel.DistributedDataParallel`` (which also averages gradients by all-reduce).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

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


class RankBlocks:
    """This rank's block of every step's global batch, building views only for that block.

    The step's indices come from the generator of ``(seed, site, step)`` exactly as in one process; views and
    masks are keyed by each image and its repeat within the whole batch (:meth:`BatchMaker.build`), so the
    block holds the same tensors as the matching rows of the global batch, for ``1 / W`` of the view work.

    Parameters
    ----------
    maker : BatchMaker (or a wrapper with ``indices`` and ``build``)
    ctx : DistContext
    """

    def __init__(self, maker, ctx: DistContext) -> None:
        self.maker, self.ctx = maker, ctx

    def __call__(self, step: int, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        bsz = int(batch_size or self.maker.cfg.train.batch_size)
        if bsz % self.ctx.world_size:
            raise ValueError(f"train.batch-size {bsz} must be a multiple of the {self.ctx.world_size} GPUs of the site")
        per = bsz // self.ctx.world_size
        idx = self.maker.indices(step, bsz)
        lo = self.ctx.rank * per
        before: dict[int, int] = {}
        for j in idx[:lo].tolist():
            before[j] = before.get(j, 0) + 1
        return self.maker.build(step, idx[lo:lo + per], repeats=before)


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
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=collective_device())
    dist.all_reduce(values)
    return dict(zip(keys, (values / ctx.world_size).cpu().tolist()))


def collective_device() -> torch.device:
    """Where host-side values must live for a collective: the rank's GPU under nccl (it has no CPU tensors)."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensors: Sequence[torch.Tensor], ctx: DistContext) -> None:
    """Sum each tensor over ranks in place, in ONE coalesced all-reduce (all tensors on one device and dtype).

    Every rank receives the same bits (the collective's result is shared, not recomputed per rank), which is
    what keeps the ranks' optimizer steps identical.
    """
    import torch.distributed as dist

    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def agree_secret(value: int | None, ctx: DistContext) -> int:
    """Rank 0's secret (``value``, or a fresh ``secrets.randbits(63)`` when None) on every rank (one broadcast).

    The ranks of a site must draw the same Poisson sample of units and the same views; the value never leaves
    the site's process group (loopback / the site's GPU interconnect).
    """
    import secrets

    import torch.distributed as dist

    mine = (secrets.randbits(63) if value is None else int(value)) if ctx.is_main else 0
    t = torch.tensor([mine], dtype=torch.int64, device=collective_device())
    dist.broadcast(t, src=0)
    return int(t.item())


def unit_share(n_units: int, ctx: DistContext) -> tuple[int, int]:
    """This rank's slots ``[lo, hi)`` of the ``n_units`` units sampled at a step (whole units, never split).

    Contiguous blocks whose sizes differ by at most one; with fewer units than ranks some shares are empty
    (such a rank still joins the step's all-reduce with a zero sum).
    """
    return ctx.rank * n_units // ctx.world_size, (ctx.rank + 1) * n_units // ctx.world_size


def launch(module: str, args: Sequence[str], workers: int, *, stdout=None) -> int:
    """Run ``python -m torch.distributed.run --standalone --nproc-per-node W -m module args`` and wait.

    torchrun runs in its own process group: if this process is interrupted (KeyboardInterrupt, an exception
    from a signal handler) the group, ranks included, is terminated (then killed after 30 s). A failing rank
    makes torchrun stop the others and exit non-zero (``--max-restarts 0``).

    Parameters
    ----------
    stdout : file object, optional
        Where the ranks' stdout and stderr go (default: this process's).

    Returns
    -------
    int
        torchrun's exit code.
    """
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])  # the ranks import this very tree of xr0_core
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node",
           str(workers), "--max-restarts", "0", "-m", module, *args]
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT if stdout is not None else None, env=env,
                            start_new_session=True)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
