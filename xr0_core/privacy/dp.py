"""Sample-level DP-SGD at a site, per privacy unit, with Opacus's DP optimizer (D3, D5).

One DP step (Abadi et al. 2016, with the unit in place of the example):

1. Poisson-sample privacy units with rate q (:class:`~xr0_core.privacy.units.PoissonUnitSampler`, secret
   randomness); take at most ``privacy.images-per-unit`` images of each sampled unit, with all their views.
2. Per-unit gradient ``g_u = grad of mean_{images i of u} loss_i`` over *every* view and crop of those
   images (never one crop = one sample: that would void the guarantee).
3. Opacus ``DPOptimizer``: clip each ``g_u`` to L2 norm C, sum, add ``N(0, (sigma C)^2)``, divide by the
   expected number of units ``q * n_units``; then the wrapped AdamW steps.
4. EMA teacher update (post-processing of the noisy student iterates: no extra privacy cost). The loss
   centers are NOT updated from private batches (frozen: see :func:`dp_objective_config`).

Per-unit gradients come from one of two routes (``privacy.grad-sample-mode``):

- ``"vmap"``: ``torch.func.vmap(grad(...))`` over images, teacher targets computed batched outside; per-image
  gradients are summed into their unit (``index_add``). One batched pass: the fast route.
- ``"microbatch"``: one forward/backward per unit. Slow, but exact for any model; the reference the vmap
  route is tested against.

On a site's data-parallel ranks (``trainer.dist``, :mod:`xr0_core.train.distributed`) every rank draws the same
secret sample, takes its share of whole units, and :class:`~xr0_core.privacy.dp_ranks.RankDPOptimizer` adds the
noise once (rank 0) inside one all-reduce SUM of the clipped sums: the same mechanism, q, sigma and steps.

References: Abadi et al., "Deep Learning with Differential Privacy" (2016); Opacus
``optimizers/optimizer.py`` (``DPOptimizer``); Yu et al., "ViP" (2024) and Sander et al. (2023) on DP SSL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.config import XR0Config, from_flat
from xr0_core.privacy.ledger import PrivacyError
from xr0_core.privacy.units import PoissonUnitSampler, privacy_units, sample_rate_for
from xr0_core.runtime import autocast

log = logging.getLogger(__name__)

DP_CENTERING = "frozen-per-round"


class BatchCoupledLossError(PrivacyError, ValueError):
    """A loss term couples samples of a batch; sample-level DP would not cover it. The message names the term
    and the DP-compatible alternative."""


# ---------------------------------------------------------------------------------------------- objective
def dp_objective_config(cfg: XR0Config) -> XR0Config:
    """The DP-compatible SSL configuration used when ``privacy.enabled`` (DINO + iBOT, per-sample targets).

    - Centering: ``frozen-per-round`` (each sample's target depends only on itself and a constant center).
      Under DP the center is never moved from private batches, so it stays frozen for the whole training.
      A preset default of ``ema`` or ``sinkhorn`` is swapped in silently (logged); an explicit choice of
      a batch-coupled mode different from the preset is refused.
    - KoLeo (in-batch nearest neighbours): the preset's default weight is dropped (logged); any other
      weight > 0 is refused.

    Raises
    ------
    BatchCoupledLossError
        Naming the term and what to use instead.
    """
    if not cfg.privacy.enabled:
        return cfg
    from xr0_core.ssl.multimodal import dp_refusal  # mXR-0: contrastive refused, captioning allowed

    if (reason := dp_refusal(cfg)) is not None:
        raise BatchCoupledLossError(reason)
    s = cfg.ssl
    preset_ssl = from_flat({"preset": cfg.preset}).ssl
    if s.koleo_weight > 0 and s.koleo_weight == preset_ssl.koleo_weight:
        log.info("DP mode: the preset's KoLeo term (weight %s, in-batch neighbours) is dropped", s.koleo_weight)
        s = dataclasses.replace(s, koleo_weight=0.0)
        cfg = dataclasses.replace(cfg, ssl=s)
    if s.koleo_weight > 0:
        raise BatchCoupledLossError(
            "DP mode refuses the KoLeo term (ssl.koleo-weight > 0): its nearest neighbours are other samples of "
            "the batch, so one patient's gradient depends on other patients. DP-compatible alternative: set "
            "ssl.koleo-weight = 0 (DINO + iBOT with per-sample targets and a frozen center is the DP default)")
    cfg = _without_drop_path(cfg)
    if s.centering != DP_CENTERING:
        if s.centering != preset_ssl.centering:
            what = {"ema": "DINO's EMA center updated from raw private batches",
                    "sinkhorn": "Sinkhorn-Knopp equipartition over the batch"}.get(s.centering, s.centering)
            raise BatchCoupledLossError(
                f"DP mode refuses ssl.centering = {s.centering!r} ({what}): every sample's target then depends "
                f"on other patients' images. DP-compatible alternative: ssl.centering = \"{DP_CENTERING}\" "
                "(per-sample targets, center frozen during training)")
        log.info("DP mode: ssl.centering %r (preset default) replaced by %r: per-sample targets", s.centering,
                 DP_CENTERING)
        cfg = dataclasses.replace(cfg, ssl=dataclasses.replace(s, centering=DP_CENTERING))
    return cfg


def _without_drop_path(cfg: XR0Config) -> XR0Config:
    """Stochastic depth draws its masks from one RNG stream over the whole batch, so one unit's presence would
    shift every later unit's masks (not allowed by the add/remove proof, D14). The preset's rate is set to 0
    under DP (logged); an explicitly chosen other rate is refused."""
    rate = cfg.model.drop_path
    if rate == 0:
        return cfg
    if rate != from_flat({"preset": cfg.preset}).model.drop_path:
        raise BatchCoupledLossError(
            f"DP mode refuses model.drop-path = {rate:g}: stochastic depth masks come from one random stream over "
            "the batch, so one patient's presence changes the others' masks. Set model.drop-path = 0")
    log.info("DP mode: the preset's drop-path %g is set to 0 (per-unit randomness)", rate)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, drop_path=0.0))


def check_per_sample(model: nn.Module) -> None:
    """Refuse a model whose objective declares batch coupling (``XR0SSL.coupling``)."""
    if getattr(model, "coupling", "per-sample") != "per-sample":
        raise BatchCoupledLossError(
            "DP mode needs a per-sample objective, but the SSL model declares coupling "
            f"{model.coupling!r}; use ssl.koleo-weight = 0 and ssl.centering = \"{DP_CENTERING}\"")


# ---------------------------------------------------------------------------------------------- gradients
def _params(model) -> dict[str, nn.Parameter]:
    from xr0_core.train.loop import trainable_parameters

    return trainable_parameters(model)


@torch.no_grad()
def teacher_targets(model, batch: Mapping[str, torch.Tensor], teacher_temp: float) -> dict[str, torch.Tensor]:
    """Per-image teacher targets and gathered masked-token positions (teacher batched, no grad).

    Returns
    -------
    dict
        ``cls`` [B, G, K] DINO targets; ``patch`` [B, M, K2] iBOT targets of each image's masked tokens
        (padded to M = the largest count in the batch); ``order`` long [B, M]: positions in the image's
        ``G * N`` patch tokens; ``valid`` float [B, M]: 1 for a real masked token, 0 for padding.
    """
    from xr0_core.models.backbone import forward_tokens

    glob, masks = batch["global"], batch["masks"].bool()
    b, g = glob.shape[:2]
    t_tok = forward_tokens(model.teacher["backbone"], glob.flatten(0, 1))  # [B*G, 1+N, D]
    d = t_tok.shape[-1]
    t_cls = model.teacher["dino_head"](t_tok[:, 0]).reshape(b, g, -1)
    mflat = masks.reshape(b, -1)  # [B, G*N]: an image's tokens over its global views, view-major
    counts = mflat.sum(dim=1)
    m = max(int(counts.max()) if b else 0, 1)
    order = torch.argsort((~mflat).to(torch.int8), dim=1, stable=True)[:, :m]  # masked positions first
    valid = (torch.arange(m, device=glob.device)[None] < counts[:, None]).float()
    patches = t_tok[:, 1:].reshape(b, -1, d).gather(1, order[..., None].expand(-1, -1, d))
    t_patch = model.teacher["ibot_head"](patches)  # [B, M, K2]
    return {"cls": model.dino_loss.softmax_center_teacher(t_cls, teacher_temp),
            "patch": model.ibot_loss.softmax_center_teacher(t_patch, teacher_temp),
            "order": order, "valid": valid}


class _ImageLoss(nn.Module):
    """The student's loss of ONE image (all its views), written so that ``torch.func.vmap`` can map it.

    Equal to ``XR0SSL.forward(batch).loss[i]`` for per-sample objectives (test: tests/privacy/test_dp.py).
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.student = model.student
        self.mask_token = model.mask_token
        self.dino_loss, self.ibot_temp = model.dino_loss, model.ibot_loss.student_temp
        self.w_dino, self.w_ibot = model.weights["dino"], model.weights["ibot"]

    def forward(self, glob, loc, masks, t_cls, t_patch, order, valid):
        """glob [G, 1, S, S], loc [L, 1, s, s], masks bool [G, N], t_cls [G, K], t_patch [M, K2],
        order long [M], valid [M] -> scalar."""
        from xr0_core.models.backbone import forward_tokens

        bb = self.student["backbone"]
        s_tok = forward_tokens(bb, glob, masks, self.mask_token)  # [G, 1+N, D]
        views = [s_tok[:, 0]]
        if loc.shape[0] > 0:
            views.append(forward_tokens(bb, loc)[:, 0])
        s_logits = self.student["dino_head"](torch.cat(views, dim=0))  # [V, K]
        dino = self.dino_loss(s_logits[None], t_cls[None])[0]
        patches = s_tok[:, 1:].reshape(-1, s_tok.shape[-1])[order]  # [M, D]
        log_p = F.log_softmax(self.student["ibot_head"](patches).float() / self.ibot_temp, dim=-1)
        ce = -(t_patch.float() * log_p).sum(dim=-1)
        ibot = (ce * valid).sum() / valid.sum().clamp(min=1.0)
        return self.w_dino * dino + self.w_ibot * ibot


@contextlib.contextmanager
def unfused_attention(module: nn.Module) -> Iterator[None]:
    """Switch timm attention to its explicit ``q @ k^T`` path while mapping with ``vmap``: PyTorch has no vmap
    batching rule for the fused SDPA kernels (it would fall back to a slow per-sample loop)."""
    changed = [m for m in module.modules() if getattr(m, "fused_attn", False) is True]
    for m in changed:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in changed:
            m.fused_attn = True


def per_unit_grads_vmap(model, batch: Mapping[str, torch.Tensor], image_slot: torch.Tensor, n_units: int,
                        teacher_temp: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-unit gradients through ``torch.func`` (one batched pass).

    Parameters
    ----------
    batch : dict
        ``global`` [B, G, 1, S, S], ``local`` [B, L, 1, s, s], ``masks`` bool [B, G, N].
    image_slot : LongTensor [B]
        Unit (``0 .. n_units-1``) of each image.

    Returns
    -------
    grads : dict name -> Tensor [U, *param.shape]
        Gradient of each unit's mean image loss (keys of ``trainable_parameters``).
    unit_loss : Tensor [U]
    """
    from torch.func import functional_call, grad_and_value, vmap

    params = _params(model)
    fn = _ImageLoss(model)
    inner = {("student." + k if k != "mask_token" else k): p.detach() for k, p in params.items()}
    targets = teacher_targets(model, batch, teacher_temp)

    def loss_of(p, glob, loc, masks, t_cls, t_patch, order, valid):
        return functional_call(fn, p, (glob, loc, masks, t_cls, t_patch, order, valid))

    with unfused_attention(model.student):
        g_img, loss_img = vmap(grad_and_value(loss_of), in_dims=(None, 0, 0, 0, 0, 0, 0, 0),
                               randomness="different")(
            inner, batch["global"], batch["local"], batch["masks"].bool(), targets["cls"], targets["patch"],
            targets["order"], targets["valid"])
    weight = _mean_weights(image_slot, n_units)  # [B]: 1 / images of the unit
    grads = {}
    for k in params:
        gi = g_img["student." + k if k != "mask_token" else k]
        w = weight.to(gi.dtype).reshape(-1, *([1] * (gi.ndim - 1)))
        grads[k] = gi.new_zeros((n_units, *gi.shape[1:])).index_add_(0, image_slot.to(gi.device), gi * w)
    unit_loss = loss_img.new_zeros(n_units).index_add_(0, image_slot.to(loss_img.device),
                                                        loss_img.detach() * weight.to(loss_img.device))
    return grads, unit_loss


def per_unit_grads_microbatch(model, batch: Mapping[str, torch.Tensor], image_slot: torch.Tensor, n_units: int,
                              teacher_temp: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-unit gradients by one forward/backward per unit (same outputs as :func:`per_unit_grads_vmap`)."""
    params = _params(model)
    names, plist = list(params), list(params.values())
    grads = {k: torch.zeros((n_units, *p.shape), device=p.device, dtype=p.dtype) for k, p in params.items()}
    losses = torch.zeros(n_units)
    for u in range(n_units):
        rows = torch.nonzero(image_slot == u).flatten()
        sub = {k: v[rows.to(v.device)] for k, v in batch.items() if k != "index"}  # mXR-0: report tokens too
        loss = model(sub, teacher_temp).loss.float().mean()
        gs = torch.autograd.grad(loss, plist, allow_unused=True)
        for k, gk in zip(names, gs):
            if gk is not None:
                grads[k][u] = gk
        losses[u] = float(loss.detach())
    return grads, losses


GRAD_ROUTES = {"vmap": per_unit_grads_vmap, "microbatch": per_unit_grads_microbatch}


def _mean_weights(image_slot: torch.Tensor, n_units: int) -> torch.Tensor:
    counts = torch.zeros(n_units).index_add_(0, image_slot.cpu(), torch.ones(image_slot.numel()))
    return (1.0 / counts.clamp(min=1.0))[image_slot.cpu()]


# ---------------------------------------------------------------------------------------------- the session
def noise_generator(device: torch.device, seed: int | None = None) -> torch.Generator:
    """Generator of the DP noise: a secret seed (``secrets``) unless a test passes one. The noise must be
    unpredictable to the coordinator, who knows the run seed."""
    g = torch.Generator(device=device)
    g.manual_seed(secrets.randbits(63) if seed is None else int(seed))
    return g


class DPSession:
    """DP-SGD state of one local round: units, the Poisson sampler and Opacus's ``DPOptimizer`` around the
    trainer's AdamW (whose moments stay the site's state).

    Parameters
    ----------
    trainer : SiteTrainer
        On a data-parallel rank, ``trainer.dist`` must be set BEFORE the session is built: the ranks then share
        rank 0's secrets and the session's optimizer adds the noise once for the group (``SiteTrainer.train``
        refuses a session built for another group).
    noise_multiplier : float
        sigma (noise std = sigma * C).
    sample_rate : float, optional
        Poisson rate q (default from the config: ``privacy.sample-rate`` or batch-size / units).
    seed : int, optional
        Tests and benchmarks only: fixes sampling and noise. Default: secret randomness.
    view_secret : int, optional
        Secret per-round seed of the views and iBOT masks, which are keyed by (this seed, the image's stable
        key, step), never by the image's position in the batch: one unit's presence changes nothing about
        the others' views (D14). Default: a fresh secret (``secrets``), or derived from ``seed`` in tests.
    """

    def __init__(self, trainer, noise_multiplier: float, sample_rate: float | None = None,
                 seed: int | None = None, view_secret: int | None = None) -> None:
        from opacus.optimizers import DPOptimizer

        p = trainer.cfg.privacy
        check_per_sample(trainer.model)
        self.units = privacy_units(trainer.cache.kept)
        self.sample_rate = sample_rate if sample_rate is not None else sample_rate_for(
            trainer.cfg.train.batch_size, self.units.n_units, p.sample_rate)
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(p.max_grad_norm)
        # mXR-0 declares "microbatch": the vmap route maps the image loss only.
        self.mode = getattr(trainer.model, "dp_grad_sample_mode", None) or p.grad_sample_mode
        if view_secret is None:
            view_secret = secrets.randbits(63) if seed is None else seed + 2
        sampler_seed = secrets.randbits(63) if seed is None else seed
        # Data-parallel ranks (xr0_core/train/distributed.py) draw the same units and views: rank 0's secrets.
        self.dist = getattr(trainer, "dist", None)
        if self.dist is not None:
            from xr0_core.train.distributed import agree_secret

            sampler_seed = agree_secret(sampler_seed, self.dist)
            view_secret = agree_secret(view_secret, self.dist)
        self.sampler = PoissonUnitSampler(self.units, self.sample_rate, p.images_per_unit, seed=sampler_seed)
        options = dict(noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                       expected_batch_size=self.sample_rate * self.units.n_units, loss_reduction="mean",
                       generator=noise_generator(trainer.device, None if seed is None else seed + 1))
        if self.dist is None:
            self.optimizer = DPOptimizer(trainer.optimizer, **options)
        else:  # clip per rank, noise once on rank 0, one all-reduce SUM (xr0_core/privacy/dp_ranks.py)
            from xr0_core.privacy.dp_ranks import RankDPOptimizer

            self.optimizer = RankDPOptimizer(trainer.optimizer, dist=self.dist, **options)
        self.view_secret = int(view_secret)
        self.steps = 0

    def step(self, trainer, maker, schedules, step: int, *, rng_seed: int) -> dict[str, float]:
        """One DP-SGD step at global step ``step`` (numbered as in :func:`xr0_core.train.loop.train_step`)."""
        from xr0_core.train.loop import _step_rng, to_device

        model, device = trainer.model, trainer.device
        hp = schedules.at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = hp["lr"]
            group["weight_decay"] = hp["wd"] * group.get("wd_scale", 1.0)
        model.train()
        images, slots = self.sampler.draw()  # the global draw (identical on every rank)
        n_units = int(slots.max()) + 1 if slots.numel() else 0
        if self.dist is not None:  # this rank's whole units: slots [lo, hi), renumbered from 0
            from xr0_core.train.distributed import unit_share

            lo, hi = unit_share(n_units, self.dist)
            mine = (slots >= lo) & (slots < hi)
            images, slots, n_mine = images[mine], slots[mine] - lo, hi - lo
        else:
            n_mine = n_units
        params = _params(model)
        unit_loss = torch.zeros(0)
        grads = None
        if n_mine:
            batch = to_device({k: v for k, v in maker.build(step, images, secret=self.view_secret).items()
                               if k != "index"}, device)
            with _step_rng(device, rng_seed), autocast(device, trainer.cfg.train.precision):
                grads, unit_loss = GRAD_ROUTES[self.mode](model, batch, slots.to(device), n_mine,
                                                          hp["teacher_temp"])
        # [loss sum, images] over all ranks: every rank takes the same decision on a non-finite loss (a rank
        # raising alone would leave the others waiting in the gradient all-reduce).
        totals = torch.tensor([float(unit_loss.double().sum()), float(images.numel())], dtype=torch.float64)
        if self.dist is not None:
            from xr0_core.train.distributed import all_reduce_sum_, collective_device

            totals = totals.to(collective_device())
            all_reduce_sum_([totals], self.dist)
            totals = totals.cpu()
        loss_sum, n_images = float(totals[0]), int(totals[1])
        if loss_sum != loss_sum or loss_sum in (float("inf"), float("-inf")):
            raise FloatingPointError(f"non-finite SSL loss at DP step {step}; lower train.lr")
        for k, p in params.items():
            # no unit here: zero rows; the step still adds noise (the accountant counts every step)
            p.grad_sample = grads[k].to(p.dtype) if grads is not None else \
                torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        model.update_teacher(hp["momentum"])
        # No center update: under DP the centers never see raw private batches.
        self.steps += 1
        return {"loss": loss_sum / n_units if n_units else float("nan"), "lr": hp["lr"],
                "wd": hp["wd"], "momentum": hp["momentum"], "teacher-temp": hp["teacher_temp"],
                "dp-units": float(n_units), "dp-images": float(n_images)}
