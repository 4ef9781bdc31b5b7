"""The training step's shared pieces: optimizer groups, schedules applied, the seeded step RNG, and the plain
step :func:`train_step` (STYLE 1: the only place besides the DP step, :class:`xr0_core.train.stepper.DPStep`, that
calls ``backward``; both end in :func:`optimizer_and_teacher_step`).

A step is a pure function of (model state, optimizer state, batch, schedules[step]) plus a torch RNG seeded
from (seed, site, step) for stochastic layers (drop-path), so the same start state and step range give
bitwise identical results on CPU whatever happened before -- what makes resume and federation exact.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from xr0_core.runtime import autocast, derive_seed
from xr0_core.ssl.method import MASK_TOKEN, XR0SSL
from xr0_core.ssl.schedules import Schedules


def trainable_parameters(model: XR0SSL) -> dict[str, nn.Parameter]:
    """Student parameters and the mask token, by name (``backbone.*``, ``dino_head.*``, ``ibot_head.*``,
    ``mask_token``): the names used in the shared state dict and in the flattened optimizer state."""
    params = {k: p for k, p in model.student.named_parameters() if p.requires_grad}
    params[MASK_TOKEN] = model.mask_token
    return params


def no_weight_decay(name: str, param: torch.Tensor, model: XR0SSL) -> bool:
    """Biases, norms (1-D), position embedding, CLS and mask tokens are not decayed (timm / DINO practice)."""
    if param.ndim <= 1 or name == MASK_TOKEN:
        return True
    skip = getattr(model.student["backbone"], "no_weight_decay", lambda: set())()
    return name.startswith("backbone.") and name[len("backbone."):] in skip


def build_optimizer(model: XR0SSL) -> torch.optim.AdamW:
    """AdamW with two groups; each group's ``wd_scale`` (0 or 1) multiplies the scheduled weight decay."""
    decay, no_decay = [], []
    for name, p in trainable_parameters(model).items():
        (no_decay if no_weight_decay(name, p, model) else decay).append(p)
    groups = [{"params": decay, "wd_scale": 1.0}, {"params": no_decay, "wd_scale": 0.0}]
    # Fused (one kernel for all parameters) on CUDA; the CPU path keeps the reference implementation.
    fused = all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=(0.9, 0.999), fused=fused or None)


@contextlib.contextmanager
def step_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Fork the global torch RNG, seed it for this step, restore it afterwards (no global side effect)."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        yield


def apply_schedules(optimizer: torch.optim.Optimizer, hp: Mapping[str, float]) -> None:
    """Learning rate and weight decay of this step (``hp = schedules.at(step)``) into every parameter group;
    a group's ``wd_scale`` (0 or 1, :func:`build_optimizer`) multiplies the scheduled weight decay."""
    for group in optimizer.param_groups:
        group["lr"] = hp["lr"]
        group["weight_decay"] = hp["wd"] * group.get("wd_scale", 1.0)


def optimizer_and_teacher_step(model: XR0SSL, optimizer: torch.optim.Optimizer, hp: Mapping[str, float]) -> None:
    """The end of every step, plain or DP: ``optimizer.step()`` (for DP, Opacus's clip + noise + AdamW),
    ``zero_grad``, then the EMA update of the teacher with ``momentum[step]`` (post-processing of the student
    iterates: under DP it costs no privacy)."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_teacher(hp["momentum"])


def step_metrics(hp: Mapping[str, float]) -> dict[str, float]:
    """The schedule values every step reports: ``lr``, ``wd``, ``momentum``, ``teacher-temp``."""
    return {"lr": hp["lr"], "wd": hp["wd"], "momentum": hp["momentum"], "teacher-temp": hp["teacher_temp"]}


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a batch to ``device``; on CUDA the copies are asynchronous (the DataLoader pins host memory)."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def host_metrics(metrics: Mapping[str, object], step: int | None = None) -> dict[str, float]:
    """Device scalars of :func:`train_step` (``sync=False``) -> floats, in ONE device-to-host copy.

    Raises
    ------
    FloatingPointError
        The loss is not finite (the check :func:`train_step` skips when it does not sync).
    """
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).cpu().tolist() if keys else []
    out: dict[str, float] = {k: v for k, v in metrics.items() if not torch.is_tensor(v)}  # type: ignore[misc]
    out.update(zip(keys, values))
    loss = out.get("loss", 0.0)
    if out.get("dp-units") == 0.0:
        # A DP step whose Poisson draw sampled no unit has no loss (NaN by convention) but is a real step: it
        # added noise and the accountant counts it. DPStep checks sampled units' losses itself.
        return out
    if loss != loss or loss in (float("inf"), float("-inf")):
        where = f" at step {step}" if step is not None else ""
        raise FloatingPointError(f"non-finite SSL loss{where}: {loss}; lower train.lr or check the input images")
    return out


def train_step(model: XR0SSL, optimizer: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor],
               schedules: Schedules, step: int, *, device: torch.device, precision: str = "auto",
               grad_clip: float = 0.0, rng_seed: int = 0, sync: bool = True,
               grad_hook: "Callable[[list[torch.Tensor]], None] | None" = None) -> dict[str, float]:
    """One optimisation step at global step ``step``.

    Order: set lr / wd from ``schedules[step]``; forward under autocast (teacher temperature of the step);
    ``loss.mean().backward()``; clip the global gradient norm (``grad_clip > 0``); ``optimizer.step()``;
    ``zero_grad``; EMA update of the teacher with ``momentum[step]``; center update (EMA mode) or center
    statistics (frozen-per-round mode).

    ``sync=False`` (the GPU hot loop): nothing waits for the device; loss parts and grad norm come back as
    device scalars and the finiteness check moves to :func:`host_metrics`, which the caller runs every K steps.

    Returns
    -------
    dict
        ``loss`` and ``loss-<part>`` (batch means), ``lr``, ``wd``, ``momentum``, ``teacher-temp``,
        ``grad-norm`` (before clipping; NaN when not clipping). Floats (``sync=True``) or 0-d tensors.
    """
    hp = schedules.at(step)
    apply_schedules(optimizer, hp)
    model.train()
    batch = to_device(batch, device)
    with step_rng(device, rng_seed):
        with autocast(device, precision):
            out = model(batch, hp["teacher_temp"])
        loss = out.loss.float().mean()
        if sync and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite SSL loss at step {step}: {float(loss)}; lower train.lr or "
                                     "check the input images")
        loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if grad_hook is not None:  # data-parallel ranks average their gradients here (xr0_core/train/distributed.py)
        grad_hook(params)
    grad_norm: float | torch.Tensor = float("nan")
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer_and_teacher_step(model, optimizer, hp)
    model.update_centers(out)
    metrics: dict[str, object] = {"loss": loss.detach()}
    for name, part in out.parts.items():
        metrics[f"loss-{name}"] = part.detach().float().mean()
    metrics.update({**step_metrics(hp), "grad-norm": grad_norm})
    return host_metrics(metrics, step) if sync else metrics  # type: ignore[return-value]


def step_seed(seed: int, site: str, step: int) -> int:
    """Seed of the stochastic layers (drop-path) at ``step`` of ``site``."""
    return derive_seed(seed, "step-rng", site, step)
