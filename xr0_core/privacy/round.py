"""One private federated round at a site: budget check, DP-SGD session, ledger entry, client-level release.

Called by :func:`xr0_core.train.federated.run_local_round` only (framework-free; the ClientApp passes the
hospital's node-config budget through).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from xr0_core.privacy.budget import RoundPlan, plan_round, record_round, resolve_budget
from xr0_core.privacy.ledger import PrivacyLedger
from xr0_core.privacy.units import privacy_units, sample_rate_for

log = logging.getLogger(__name__)

# Metrics computed from private data without DP noise (losses) stay in the site's log, not in the reply.
_UNCOVERED_PREFIXES = ("loss",)


@dataclass
class PrivateRound:
    trainer: Any  # SiteTrainer
    plan: RoundPlan
    run_id: str
    server_round: int
    state_dir: Path
    unit: str

    def finish(self, shared: dict[str, torch.Tensor], global_weights: Mapping[str, torch.Tensor],
               metrics: dict[str, float]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Record the release in the ledger, apply client-level DP, return what may leave."""
        cfg = self.trainer.cfg
        steps = self.trainer.dp.steps if self.trainer.dp is not None else 0
        self.trainer.dp = None
        if cfg.privacy.client_level:
            from xr0_core.privacy.client_dp import client_level_release
            from xr0_core.privacy.dp import noise_generator

            shared, norm = client_level_release(
                shared, global_weights, clip=cfg.privacy.client_clip,
                noise_multiplier=cfg.privacy.client_noise_multiplier, generator=noise_generator(torch.device("cpu")))
            log.info("client-level DP: update norm %.4g clipped to %g", norm, cfg.privacy.client_clip)
        with PrivacyLedger(self.state_dir).transaction() as data:
            data.unit = self.unit
        eps = record_round(self.state_dir, self.plan, run_id=self.run_id, server_round=self.server_round,
                           steps=steps)
        kept = {k: v for k, v in metrics.items() if not k.startswith(_UNCOVERED_PREFIXES)}
        log.info("round %d private metrics kept at the site: %s", self.server_round,
                 {k: v for k, v in metrics.items() if k not in kept})
        kept.update({"epsilon": float(eps), "privacy-delta": float(self.plan.delta),
                     "privacy-budget": float(self.plan.budget), "noise-multiplier": float(self.plan.noise_multiplier),
                     "sample-rate": float(self.plan.sample_rate), "dp-steps": float(steps)})
        return shared, kept


def begin_private_round(trainer, spec, state_dir: Path, budget: float | None, delta: float | None) -> PrivateRound:
    """Resolve the budget, plan (or refuse) the round, and attach a DP-SGD session to ``trainer``.

    Raises
    ------
    PrivacyBudgetExceeded, PrivacyError
    """
    cfg = trainer.cfg
    site_budget = resolve_budget(Path(state_dir), cfg, budget, delta)
    len(trainer.cache)  # decode now: units come from the kept records
    units = privacy_units(trainer.cache.kept)
    q = sample_rate_for(cfg.train.batch_size, units.n_units, cfg.privacy.sample_rate) if cfg.privacy.enabled else 1.0
    plan = plan_round(cfg, Path(state_dir), site_budget, run_id=spec.run_key, server_round=spec.server_round,
                      local_steps=spec.local_steps, remaining_steps=spec.total_steps - spec.global_step,
                      sample_rate=q)
    if cfg.privacy.enabled:
        from xr0_core.privacy.dp import DPSession

        trainer.dp = DPSession(trainer, plan.noise_multiplier, q)
        log.info("DP round %d: unit %s, sigma %.4f, q %.4g, epsilon %.3f -> %.3f of %g (delta %g)",
                 spec.server_round, units.describe(), plan.noise_multiplier, q, plan.epsilon_before,
                 plan.epsilon_after, plan.budget, plan.delta)
    return PrivateRound(trainer, plan, spec.run_key, spec.server_round, Path(state_dir), units.kind)
