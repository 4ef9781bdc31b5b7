"""The privacy side of one federated round at a site: reserve, build the DP-SGD step, then release (D3, D14).

Called by :mod:`xr0_core.site.round` only, which composes policy, training and this module (so that
``xr0_core.train`` knows nothing of privacy).

1. :func:`reserve_private_round`: privacy units from the site's training records, Poisson rate q, then the
   reservation (:func:`xr0_core.privacy.reservation.reserve_round`: budget, run cap, noise cap and unit checks,
   release charged as pending); then :func:`reserved_dp_step`: the :class:`~xr0_core.train.stepper.DPStep`
   with the reserved sigma and q and a fresh secret per-round seed for views and masks, which the site's round
   gives the trainer. A round on several processes reserves once in the launching process and builds the step
   on every rank (:mod:`xr0_core.site.launch.parallel`).
2. training (by the caller);
3. :meth:`PrivateRound.finish`: client-level clip + noise, commit the reservation, and the metrics that may
   leave (epsilon over every run and over this one, delta, budget, run cap, DP steps; never losses, the sample rate or the noise multiplier, which
   reveal the patient count).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from xr0_core.privacy.reservation import Reservation, RoundRequest, commit_round, reserve_round, withdraw_round
from xr0_core.privacy.units import privacy_units, sample_rate_for

log = logging.getLogger(__name__)


@dataclass
class PrivateRound:
    """A reserved private round: what training must use (``noise_multiplier``, ``sample_rate``, ``n_units``) and
    what :meth:`finish` commits."""

    reservation: Reservation
    state_dir: Path
    unit: str
    client_level: bool
    client_clip: float
    sample_level: bool = True
    sample_rate: float = 1.0
    n_units: int = 0

    @property
    def noise_multiplier(self) -> float:
        return float(self.reservation.noise_multiplier)

    def withdraw(self, why: str) -> None:
        """Nothing of this round left the site or was saved: its reservation stops counting (see
        :func:`~xr0_core.privacy.reservation.withdraw_round`)."""
        withdraw_round(self.state_dir, self.reservation, why)

    def charge_unused(self, why: str) -> None:
        """Commit the reservation although the update will not leave (its local state was already saved, so
        what it learnt stays in the site's later releases): charged, with ``why`` in the ledger."""
        commit_round(self.state_dir, self.reservation, note=f"charged, unused: {why}")

    def finish(self, shared: dict[str, torch.Tensor], global_weights: Mapping[str, torch.Tensor],
               metrics: dict[str, float], *, steps: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Client-level DP (if on), commit the reservation, and return what may leave (before policy filters).

        ``steps``: DP-SGD steps the session ran (0 without sample-level DP); it must not exceed the reserved
        steps: fewer would still be charged in full (over-count), more would be an under-count and is refused.
        """
        res = self.reservation
        if steps > res.steps:
            raise RuntimeError(f"DP session ran {steps} steps but {res.steps} were reserved: not releasing")
        if self.client_level:
            from xr0_core.privacy.client_dp import client_level_release
            from xr0_core.privacy.dp import noise_generator

            shared, norm = client_level_release(
                shared, global_weights, clip=self.client_clip, noise_multiplier=res.client_noise_multiplier,
                generator=noise_generator(torch.device("cpu")))
            log.info("client-level DP: update norm %.4g clipped to %g", norm, self.client_clip)
        eps, run_eps = commit_round(self.state_dir, res)
        log.info("round %d private metrics kept at the site: %s", res.server_round, metrics)
        out = {k: v for k, v in metrics.items() if k == "num-examples"}
        out.update({"epsilon": float(eps), "epsilon-run": float(run_eps), "privacy-delta": float(res.delta),
                    "privacy-budget": float(res.budget), "privacy-run-cap": res.effective_run_cap,
                    "dp-steps": float(steps)})
        return shared, out


def reserve_private_round(cfg, records, spec, state_dir: Path, terms) -> PrivateRound:
    """Reserve this round in the ledger (charged as pending from here on); attaches nothing.

    Parameters
    ----------
    records : sequence
        The training images' records (``ImageSource.kept``): privacy units and q come from them.
    spec : xr0_core.train.round_state.RoundSpec
    terms : xr0_core.site.policy.PrivacyTerms

    Raises
    ------
    PrivacyBudgetExceeded, NoiseAboveCap, UnitMismatch, PrivacyError
        Before any training; nothing was charged.
    """
    units = privacy_units(records)
    req = round_request(cfg, units, spec, terms)
    q = req.sample_rate
    res = reserve_round(Path(state_dir), terms, req)
    if terms.sample_level:
        log.info("DP round %d: unit %s, sigma %.4f, q %.4g, epsilon %.3f -> %.3f of %g (delta %g)",
                 spec.server_round, units.describe(), res.noise_multiplier, q, res.epsilon_before,
                 res.epsilon_after, res.budget, res.delta)
    return PrivateRound(res, Path(state_dir), units.kind, terms.client_level, cfg.privacy.client_clip,
                        sample_level=terms.sample_level, sample_rate=q, n_units=units.n_units)


def round_request(cfg, units, spec, terms) -> RoundRequest:
    """What a round asks of the ledger: its DP-SGD steps at Poisson rate q = batch / units (or the run
    config's ``privacy.sample-rate``), the run config's fixed sigma (0: calibrate), client-level noise.

    ``units``: :func:`~xr0_core.privacy.units.privacy_units` of the training records; ``spec``: anything with
    ``run_key``, ``server_round``, ``global_step``, ``total_steps``, ``local_steps`` (the round's
    :class:`~xr0_core.train.round_state.RoundSpec`, or the preflight's announcement)."""
    q = sample_rate_for(cfg.train.batch_size, units.n_units, cfg.privacy.sample_rate) if terms.sample_level else 1.0
    return RoundRequest(run_id=spec.run_key, server_round=spec.server_round, local_steps=spec.local_steps,
                        remaining_steps=spec.total_steps - spec.global_step, sample_rate=q, unit=units.kind,
                        sample_level=terms.sample_level, sigma=cfg.privacy.noise_multiplier,
                        client_level=terms.client_level, client_sigma=cfg.privacy.client_noise_multiplier)


def reserved_dp_step(trainer, noise_multiplier: float, sample_rate: float, n_units: int):
    """The DP-SGD step of a reserved round (:func:`xr0_core.privacy.dp.dp_step`): the reserved sigma and q, a
    fresh secret per-round seed for views and masks. On data-parallel ranks set ``trainer.dist`` first (the
    ranks then agree on rank 0's secrets). The caller gives it to the trainer (``trainer.use_stepper``).

    Raises
    ------
    UnitMismatch
        The trainer's images form another number of units than the reservation was made for.
    """
    from xr0_core.privacy.dp import dp_step
    from xr0_core.privacy.reservation import UnitMismatch

    n = privacy_units(trainer.cache.kept).n_units
    if n != n_units:
        raise UnitMismatch(f"the training images form {n} privacy units but the round was reserved for "
                           f"{n_units}: the site's data changed during the round; rerun it")
    return dp_step(trainer, noise_multiplier, sample_rate, view_secret=secrets.randbits(63))
