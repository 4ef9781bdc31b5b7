"""How :class:`~xr0_core.train.trainer.SiteTrainer` takes one optimisation step: plain or DP-SGD.

A stepper is the one thing that differs between a plain and a private local round. Both differentiate the
model's one objective (:meth:`~xr0_core.ssl.method.XR0SSL.student_losses`), set lr / wd from the schedules,
and end in the same :func:`~xr0_core.train.loop.optimizer_and_teacher_step` (optimizer step, EMA teacher):

- :class:`PlainStep`: the batch's mean loss, ``backward``, data-parallel gradient average, optional global-norm
  clipping (:func:`~xr0_core.train.loop.train_step`); the loss centers move from the batch;
- :class:`DPStep`: DP-SGD (Abadi et al. 2016, with the privacy unit in place of the example):

  1. draw units by Poisson sampling with rate q (the injected ``sampler``: secret randomness) and build their
     views, keyed by a secret per-round seed and each image's stable key, never by batch position;
  2. per-unit gradient ``g_u = grad of mean_{images i of u} loss_i`` over every view and crop of those images
     (:mod:`xr0_core.train.per_unit`; never one crop = one sample: that would void the guarantee);
  3. Opacus ``DPOptimizer``: clip each ``g_u`` to L2 norm C, sum, add ONE draw of ``N(0, (sigma C)^2)``,
     divide by the expected number of units ``q * n_units``; then the wrapped AdamW steps;
  4. EMA teacher update. The loss centers are NOT updated from private batches.

  On a site's data-parallel ranks every rank draws the same units, takes its share of whole units and
  :class:`~xr0_core.train.dp_ranks.RankDPOptimizer` adds the noise once (rank 0) inside one all-reduce SUM.

``train`` decides nothing about privacy: which stepper runs, its sigma, q, unit grouping, secrets and the
DP-compatible objective are chosen above it (:mod:`xr0_core.privacy.dp`, composed by :mod:`xr0_core.site.round`).

References: Abadi et al., "Deep Learning with Differential Privacy" (2016); Opacus
``optimizers/optimizer.py`` (``DPOptimizer``); Yu et al., "ViP" (2024) and Sander et al. (2023) on DP SSL.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from xr0_core.runtime import autocast
from xr0_core.train.loop import (
    apply_schedules, optimizer_and_teacher_step, step_metrics, step_rng, to_device, train_step, trainable_parameters,
)
from xr0_core.train.per_unit import GRAD_ROUTES


class Stepper(Protocol):
    """One optimisation step of a trainer at a global step.

    Attributes
    ----------
    private : bool
        The step is DP-SGD: the trainer then reads no private image outside it (no health probe) and keeps its
        modules eager (``torch.func`` needs them; no ``train.compile``).
    draws_own_batches : bool
        The step draws its images itself (Poisson sampling of units); the trainer passes ``batch=None``.
    steps : int
        Steps taken so far (under DP: what the ledger charges).
    dist : DistContext or None
        The data-parallel group the step was built for (None: not bound to one).
    """

    private: bool
    draws_own_batches: bool
    steps: int
    dist: Any

    def __call__(self, trainer: Any, batch: dict[str, torch.Tensor] | None, schedules: Any, step: int, *,
                 rng_seed: int, sync: bool) -> dict[str, Any]:
        """Take step ``step``; returns its metrics (floats, or device scalars when not ``sync``)."""


class PlainStep:
    """The non-private step: :func:`~xr0_core.train.loop.train_step` on the trainer's batch."""

    private = False
    draws_own_batches = False
    dist = None  # runs in whatever group the trainer is in (it averages the ranks' gradients itself)

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, trainer, batch, schedules, step, *, rng_seed, sync):
        grad_hook = None
        if trainer.dist is not None:
            from xr0_core.train import distributed

            # Average the ranks' gradients after backward (the mean over the global batch).
            grad_hook = lambda params: distributed.average_gradients(params, trainer.dist)  # noqa: E731
        batch.pop("index", None)  # on data-parallel ranks: already this rank's block (RankBlocks)
        out = train_step(trainer.model, trainer.optimizer, batch, schedules, step, device=trainer.device,
                         precision=trainer.cfg.train.precision, grad_clip=trainer.cfg.train.grad_clip,
                         rng_seed=rng_seed, sync=sync, grad_hook=grad_hook)
        self.steps += 1
        return out


class DPStep:
    """DP-SGD steps of one local round (numbered as in the module docstring).

    Parameters
    ----------
    trainer : SiteTrainer
        Its AdamW is wrapped (the moments stay the site's state); on a data-parallel rank ``trainer.dist`` must
        be set before (the step then adds the noise once for the group).
    sampler : object
        ``draw() -> (images LongTensor [n], unit slots LongTensor [n])``: Poisson sampling of whole units with
        rate ``sample_rate``, the same draw on every rank (:class:`xr0_core.privacy.units.PoissonUnitSampler`).
    n_units : int
        Units in the sampled population (the expected batch size is ``sample_rate * n_units``).
    sample_rate, noise_multiplier, max_grad_norm : float
        q, sigma (noise std = sigma * C) and the clipping norm C.
    noise_generator : torch.Generator
        Secret generator of the noise (the coordinator knows the run seed).
    view_secret : int
        Secret per-round seed of the views and iBOT masks.
    mode : {"vmap", "microbatch"}
        Per-unit gradient route (:data:`xr0_core.train.per_unit.GRAD_ROUTES`).
    """

    private = True
    draws_own_batches = True

    def __init__(self, trainer: Any, *, sampler: Any, n_units: int, sample_rate: float, noise_multiplier: float,
                 max_grad_norm: float, noise_generator: torch.Generator, view_secret: int, mode: str) -> None:
        from opacus.optimizers import DPOptimizer

        if mode not in GRAD_ROUTES:
            raise ValueError(f"unknown per-unit gradient route {mode!r}; known: {', '.join(GRAD_ROUTES)}")
        self.sampler = sampler
        self.n_units = int(n_units)
        self.sample_rate = float(sample_rate)
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.view_secret = int(view_secret)
        self.mode = mode
        self.dist = trainer.dist
        options = dict(noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                       expected_batch_size=self.sample_rate * self.n_units, loss_reduction="mean",
                       generator=noise_generator)
        if self.dist is None:
            self.optimizer = DPOptimizer(trainer.optimizer, **options)
        else:  # clip per rank, noise once on rank 0, one all-reduce SUM (xr0_core/train/dp_ranks.py)
            from xr0_core.train.dp_ranks import RankDPOptimizer

            self.optimizer = RankDPOptimizer(trainer.optimizer, dist=self.dist, **options)
        self.steps = 0

    def _my_units(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Step 1: the global draw (identical on every rank) and this rank's whole units, renumbered from 0.

        Returns (images [n], slots [n], units sampled in all, units of this rank)."""
        images, slots = self.sampler.draw()
        n_units = int(slots.max()) + 1 if slots.numel() else 0
        if self.dist is None:
            return images, slots, n_units, n_units
        from xr0_core.train.distributed import unit_share

        lo, hi = unit_share(n_units, self.dist)
        mine = (slots >= lo) & (slots < hi)
        return images[mine], slots[mine] - lo, n_units, hi - lo

    def _totals(self, unit_loss: torch.Tensor, n_images: int) -> tuple[float, int]:
        """[loss sum, images] over all ranks: every rank takes the same decision on a non-finite loss (a rank
        raising alone would leave the others waiting in the gradient all-reduce)."""
        totals = torch.tensor([float(unit_loss.double().sum()), float(n_images)], dtype=torch.float64)
        if self.dist is not None:
            from xr0_core.train.distributed import all_reduce_sum_, collective_device

            totals = totals.to(collective_device())
            all_reduce_sum_([totals], self.dist)
            totals = totals.cpu()
        return float(totals[0]), int(totals[1])

    def __call__(self, trainer, batch, schedules, step, *, rng_seed, sync):
        model, device = trainer.model, trainer.device
        hp = schedules.at(step)
        apply_schedules(self.optimizer, hp)
        model.train()
        images, slots, n_units, n_mine = self._my_units()
        params = trainable_parameters(model)
        unit_loss = torch.zeros(0)
        grads = None
        if n_mine:  # step 2
            views = trainer.batch_maker().build(step, images, secret=self.view_secret)
            views = to_device({k: v for k, v in views.items() if k != "index"}, device)
            with step_rng(device, rng_seed), autocast(device, trainer.cfg.train.precision):
                grads, unit_loss = GRAD_ROUTES[self.mode](model, views, slots.to(device), n_mine,
                                                          hp["teacher_temp"])
        loss_sum, n_images = self._totals(unit_loss, images.numel())
        if loss_sum != loss_sum or loss_sum in (float("inf"), float("-inf")):
            raise FloatingPointError(f"non-finite SSL loss at DP step {step}; lower train.lr")
        for k, p in params.items():
            # no unit here: zero rows; the step still adds noise (the accountant counts every step)
            p.grad_sample = grads[k].to(p.dtype) if grads is not None else \
                torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        optimizer_and_teacher_step(model, self.optimizer, hp)  # step 3 (clip, noise, AdamW) and step 4
        # No center update: under DP the centers never see raw private batches.
        self.steps += 1
        return {"loss": loss_sum / n_units if n_units else float("nan"), **step_metrics(hp),
                "dp-units": float(n_units), "dp-images": float(n_images)}

