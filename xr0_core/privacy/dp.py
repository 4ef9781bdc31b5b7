"""Sample-level DP-SGD at a site, per privacy unit (D3, D5): the objective it allows and the step it runs.

The mechanism itself (Poisson-sampled units, per-unit gradients of the model's one objective, clipping to C,
one Gaussian noise draw, Opacus's DP optimizer around the site's AdamW) is
:class:`xr0_core.train.stepper.DPStep`; this module decides what it is given:

- :func:`dp_objective_config`: the DP-compatible SSL objective (per-sample targets with a frozen center, no
  KoLeo, no drop-path); batch-coupled terms chosen explicitly are refused with the alternative;
- :func:`dp_step`: the privacy units of the site's images, the secret Poisson sampler, the secret noise
  generator and per-round view seed (rank 0's on a data-parallel group), sigma, q and C -> a ``DPStep``.

References: Abadi et al., "Deep Learning with Differential Privacy" (2016); Opacus
``optimizers/optimizer.py`` (``DPOptimizer``); Yu et al., "ViP" (2024) and Sander et al. (2023) on DP SSL.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets

import torch
from torch import nn

from xr0_core.config import XR0Config, from_flat
from xr0_core.privacy.ledger import PrivacyError
from xr0_core.privacy.units import PoissonUnitSampler, privacy_units, sample_rate_for

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


# ---------------------------------------------------------------------------------------------- the session
def noise_generator(device: torch.device, seed: int | None = None) -> torch.Generator:
    """Generator of the DP noise: a secret seed (``secrets``) unless a test passes one. The noise must be
    unpredictable to the coordinator, who knows the run seed."""
    g = torch.Generator(device=device)
    g.manual_seed(secrets.randbits(63) if seed is None else int(seed))
    return g


def dp_step(trainer, noise_multiplier: float, sample_rate: float | None = None, *, seed: int | None = None,
            view_secret: int | None = None):
    """The DP-SGD step of one local round for ``trainer``: units, sampler, secrets, sigma, q and C.

    Parameters
    ----------
    trainer : SiteTrainer
        Built with the DP objective (:func:`dp_objective_config`). On a data-parallel rank, ``trainer.dist``
        must be set BEFORE: the ranks then share rank 0's secrets and the step adds the noise once for the group
        (``SiteTrainer.train`` refuses a step built for another group).
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

    Returns
    -------
    xr0_core.train.stepper.DPStep
        Give it to the trainer with ``trainer.use_stepper``; its ``steps`` is what the ledger charges.

    Raises
    ------
    BatchCoupledLossError
        The trainer's objective couples samples of a batch.
    """
    from xr0_core.train.stepper import DPStep

    p = trainer.cfg.privacy
    check_per_sample(trainer.model)
    units = privacy_units(trainer.cache.kept)
    q = sample_rate if sample_rate is not None else sample_rate_for(trainer.cfg.train.batch_size, units.n_units,
                                                                    p.sample_rate)
    if view_secret is None:
        view_secret = secrets.randbits(63) if seed is None else seed + 2
    sampler_seed = secrets.randbits(63) if seed is None else seed
    if trainer.dist is not None:  # data-parallel ranks draw the same units and views: rank 0's secrets
        from xr0_core.train.distributed import agree_secret

        sampler_seed = agree_secret(sampler_seed, trainer.dist)
        view_secret = agree_secret(view_secret, trainer.dist)
    # mXR-0 declares "microbatch": the vmap route maps the image objective only.
    mode = getattr(trainer.model, "dp_grad_sample_mode", None) or p.grad_sample_mode
    return DPStep(trainer, sampler=PoissonUnitSampler(units, q, p.images_per_unit, seed=sampler_seed),
                  n_units=units.n_units, sample_rate=q, noise_multiplier=noise_multiplier,
                  max_grad_norm=p.max_grad_norm,
                  noise_generator=noise_generator(trainer.device, None if seed is None else seed + 1),
                  view_secret=view_secret, mode=mode)
