"""A hospital's budget and the privacy bookkeeping of one federated round (D3, D9).

Order of a DP round at a site (:func:`xr0_core.train.federated.run_local_round`):

1. :func:`resolve_budget` -- epsilon and delta from the site's node config (``privacy-budget``,
   ``privacy-delta``) or, failing that, from its ledger (``xr0 privacy --state-dir D --set-budget E``).
   The run config carries no budget: the coordinator cannot raise it.
2. :func:`plan_round` -- noise multiplier (fixed by ``privacy.noise-multiplier`` or calibrated once per run to
   spend the remaining budget over the run's remaining steps) and the Poisson rate; refuses with
   :class:`PrivacyBudgetExceeded` when epsilon after this round would exceed the budget.
3. training; 4. :func:`record_round` -- the release goes into the ledger *before* the weights leave.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from xr0_core.config import XR0Config
from xr0_core.privacy.ledger import (
    KIND_CLIENT, KIND_DPSGD, PrivacyBudgetExceeded, PrivacyError, PrivacyLedger, Release, calibrate_noise,
    check_budget_values, epsilon_of,
)

log = logging.getLogger(__name__)

NODE_BUDGET = "privacy-budget"
NODE_DELTA = "privacy-delta"


@dataclass(frozen=True)
class SiteBudget:
    epsilon: float
    delta: float
    source: str  # "node-config" | "ledger"


@dataclass(frozen=True)
class RoundPlan:
    """What one round will release: ``steps`` DP-SGD steps at (sigma, q), plus an optional client-level
    Gaussian release (sigma_c, q = 1, 1 step)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    budget: float
    epsilon_before: float
    epsilon_after: float
    client_noise_multiplier: float = 0.0


def node_budget(node_config: Mapping[str, object]) -> tuple[float | None, float | None]:
    """``privacy-budget`` and ``privacy-delta`` from a node config (None when absent)."""
    def num(key: str) -> float | None:
        if key not in node_config or node_config[key] in ("", None):
            return None
        try:
            return float(node_config[key])  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise PrivacyError(f"node config {key} = {node_config[key]!r} is not a number") from None
    return num(NODE_BUDGET), num(NODE_DELTA)


def resolve_budget(state_dir: Path, cfg: XR0Config, budget: float | None = None,
                   delta: float | None = None) -> SiteBudget:
    """The site's budget: the node config's values (written to the ledger) or the ledger's.

    Raises
    ------
    PrivacyError
        DP is on but the site has set no budget anywhere.
    """
    ledger = PrivacyLedger(state_dir)
    data = ledger.read()
    if budget is not None:
        d = delta if delta is not None else (data.delta if data.delta is not None else cfg.privacy.target_delta)
        check_budget_values(budget, d)
        if data.budget != budget or data.delta != d or data.accountant != cfg.privacy.accountant:
            ledger.set_budget(budget, d, cfg.privacy.accountant)
        return SiteBudget(float(budget), float(d), "node-config")
    if data.budget is None:
        raise PrivacyError(
            "differential privacy is on but this hospital has no privacy budget: set it in the SuperNode's "
            "--node-config 'privacy-budget=8.0 privacy-delta=1e-5' (or `xr0 privacy --state-dir DIR "
            "--set-budget 8`)")
    d = delta if delta is not None else data.delta
    return SiteBudget(float(data.budget), float(d if d is not None else cfg.privacy.target_delta), "ledger")


def plan_round(cfg: XR0Config, state_dir: Path, budget: SiteBudget, *, run_id: str, server_round: int,
               local_steps: int, remaining_steps: int, sample_rate: float) -> RoundPlan:
    """Choose sigma for this run and check that the round fits in the budget.

    Parameters
    ----------
    remaining_steps : int
        Steps of this run from this round to its end (``total_steps - global_step``): the horizon over
        which a calibrated sigma spends the remaining budget.
    sample_rate : float
        Poisson rate q of this site.

    Raises
    ------
    PrivacyBudgetExceeded
        With epsilon spent, the budget and what would be reached.
    """
    ledger = PrivacyLedger(state_dir)
    p = cfg.privacy
    with ledger.transaction() as data:
        history = ledger.history(data)
        eps_before = epsilon_of(history, budget.delta, p.accountant)
        extra: list[tuple[float, float, int]] = []
        if p.client_level:
            if p.client_noise_multiplier <= 0:
                raise PrivacyError("privacy.client-level needs privacy.client-noise-multiplier > 0")
            extra.append((p.client_noise_multiplier, 1.0, 1))
        if not p.enabled:
            sigma = 0.0
        elif p.noise_multiplier > 0:
            sigma = p.noise_multiplier
        elif run_id in data.runs:
            sigma = float(data.runs[run_id]["noise_multiplier"])
        else:
            horizon = max(int(remaining_steps), int(local_steps))
            try:
                sigma = calibrate_noise(history, sample_rate=sample_rate, steps=horizon, budget=budget.epsilon,
                                        delta=budget.delta, accountant=p.accountant)
            except PrivacyBudgetExceeded as exc:
                raise PrivacyBudgetExceeded(f"{exc}; this hospital refuses to train") from None
            data.runs[run_id] = {"noise_multiplier": sigma, "sample_rate": sample_rate, "horizon_steps": horizon}
            log.info("run %s: noise multiplier %.4f calibrated for %d steps at q=%.4g within epsilon %.3g",
                     run_id, sigma, horizon, sample_rate, budget.epsilon)
        planned = ([(sigma, sample_rate, int(local_steps))] if p.enabled else []) + extra
        eps_after = epsilon_of(history + planned, budget.delta, p.accountant)
    if eps_after > budget.epsilon * (1 + 1e-9):
        raise PrivacyBudgetExceeded(
            f"privacy budget exceeded: this round would bring epsilon from {eps_before:.3f} to {eps_after:.3f} "
            f"(delta {budget.delta:g}), above the hospital's budget of {budget.epsilon:g}; the hospital refuses "
            "to train (its operator may raise privacy-budget in the node config, or leave the federation)")
    return RoundPlan(sigma, sample_rate, int(local_steps), budget.delta, budget.epsilon, eps_before, eps_after,
                     p.client_noise_multiplier if p.client_level else 0.0)


def record_round(state_dir: Path, plan: RoundPlan, *, run_id: str, server_round: int, steps: int) -> float:
    """Write this round's releases to the ledger (before the weights leave); return epsilon now."""
    ledger = PrivacyLedger(state_dir)
    eps = math.nan
    if plan.noise_multiplier > 0 and steps > 0:
        eps = ledger.record(Release(run_id, int(server_round), plan.noise_multiplier, plan.sample_rate, int(steps),
                                    plan.delta, KIND_DPSGD))
    if plan.client_noise_multiplier > 0:
        eps = ledger.record(Release(run_id, int(server_round), plan.client_noise_multiplier, 1.0, 1, plan.delta,
                                    KIND_CLIENT))
    return eps if not math.isnan(eps) else ledger.epsilon(delta=plan.delta)
