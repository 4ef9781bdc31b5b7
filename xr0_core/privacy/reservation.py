"""A private round's reservation in the site's ledger: plan, check, charge, then train (D3, D9, D14).

Order of a private round at a site (:mod:`xr0_core.site.round` composes it):

1. :func:`reserve_round`, in ONE locked ledger transaction: choose sigma (fixed by the run config, the one
   already chosen for this run, or calibrated once per run so that the run's remaining steps spend at most
   its per-run cap and never more than is left of the lifetime budget), check it against the policy's largest noise multiplier, check the unit against the releases
   already made, check epsilon after this round against the lifetime budget and the per-run cap, and
   append the round's releases as ``pending``. A pending release counts in full from this moment.
2. training (the DP-SGD session uses exactly the reserved sigma, q and steps);
3. :func:`commit_round` marks the releases ``committed``; only then may weights leave.

A crash anywhere after 1 leaves the pending release in the ledger: the site over-counts, never
under-counts. Two runs at one site that overlap in time each reserve under the same file lock, so the
second sees the first's reservation and cannot spend the same budget twice.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from xr0_core.privacy.ledger import (
    CLIENT_SENSITIVITY, KIND_CLIENT, KIND_DPSGD, STATUS_PENDING, PrivacyBudgetExceeded, PrivacyError, PrivacyLedger,
    Release, calibrate_noise, epsilon_of,
)

log = logging.getLogger(__name__)


class NoiseAboveCap(PrivacyBudgetExceeded):
    """The noise this round needs is above the site's largest useful noise multiplier: the site refuses
    rather than train (and spend budget) on updates that are mostly noise."""


class UnitMismatch(PrivacyError):
    """This round's privacy unit differs from the unit of the site's earlier releases (or its policy's)."""


@dataclass(frozen=True)
class RoundRequest:
    """What the round asks for: sample-level DP-SGD steps at Poisson rate ``sample_rate`` (with ``sigma`` 0
    meaning "calibrate"), and/or one client-level release with noise multiplier ``client_sigma``."""

    run_id: str
    server_round: int
    local_steps: int
    remaining_steps: int
    sample_rate: float
    unit: str
    sample_level: bool
    sigma: float = 0.0
    client_level: bool = False
    client_sigma: float = 0.0


@dataclass(frozen=True)
class Reservation:
    """The reserved round: what the DP session must use, and epsilon before and after (at ``delta``)."""

    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    client_noise_multiplier: float
    delta: float
    accountant: str
    budget: float
    epsilon_before: float
    epsilon_after: float
    run_epsilon_after: float
    run_cap: float = 0.0  # the policy's per-run cap (0 unset, math.inf "all")

    @property
    def effective_run_cap(self) -> float:
        """The most epsilon this run may spend: the per-run cap, or the lifetime budget when none is finite."""
        return float(self.run_cap) if 0 < self.run_cap < math.inf else float(self.budget)


def reserve_round(state_dir: Path, terms, req: RoundRequest) -> Reservation:
    """Plan this round, check it against the site's terms and charge it as pending (one transaction).

    Parameters
    ----------
    terms : xr0_core.site.policy.PrivacyTerms
        The site's budget, delta, accountant, per-run cap, largest noise multiplier and unit rule.

    Raises
    ------
    PrivacyBudgetExceeded
        Epsilon after this round would pass the lifetime budget or the per-run cap.
    NoiseAboveCap
        The (fixed or calibrated) sigma is above the policy's ``max-noise-multiplier``.
    UnitMismatch
        Mixed privacy units (see :func:`check_unit`).
    """
    ledger = PrivacyLedger(state_dir)
    with ledger.transaction() as data:
        res = _plan(data, terms, req)
        now = time.time()
        if req.sample_level:
            data.releases.append(Release(req.run_id, int(req.server_round), res.noise_multiplier, req.sample_rate,
                                         int(req.local_steps), res.delta, KIND_DPSGD, now, req.unit, STATUS_PENDING,
                                         1.0))
        if req.client_level:
            data.releases.append(Release(req.run_id, int(req.server_round), req.client_sigma, 1.0, 1, res.delta,
                                         KIND_CLIENT, now, req.unit, STATUS_PENDING, CLIENT_SENSITIVITY))
    return res


def preview_round(state_dir: Path, terms, req: RoundRequest) -> Reservation:
    """The reservation :func:`reserve_round` would make now, with the same refusals, writing nothing: what a
    site answers to the coordinator's preflight before any secure-aggregation set-up or training
    (:mod:`xr0_core.site.preflight`). The real reservation still happens, and is checked again, at training.

    Raises
    ------
    PrivacyBudgetExceeded, NoiseAboveCap, UnitMismatch
        As :func:`reserve_round`.
    """
    return _plan(PrivacyLedger(state_dir).read(), terms, req)


def _plan(data, terms, req: RoundRequest) -> Reservation:
    """Sigma, epsilon before and after, and every refusal of this round against ``data`` (the ledger's
    contents; :func:`_choose_sigma` notes a newly calibrated sigma in ``data.runs``)."""
    delta, acc, budget = terms.delta, terms.accountant, float(terms.budget)
    check_unit(data.release_units(), req.unit, terms.unit)
    counted = [r for r in data.releases if r.counts]
    history = [r.history_entry() for r in counted]
    run_history = [r.history_entry() for r in counted if r.run_id == req.run_id]
    eps_before = epsilon_of(history, delta, acc)
    client: list[tuple[float, float, int]] = []
    if req.client_level:
        client.append((req.client_sigma / CLIENT_SENSITIVITY, 1.0, 1))
    sigma = 0.0
    if req.sample_level:
        sigma = _choose_sigma(data, req, terms, history, run_history, client)
        if sigma > terms.max_noise_multiplier:
            raise NoiseAboveCap(
                f"privacy: this round needs noise multiplier {sigma:.3g} to stay within the budget (epsilon "
                f"{eps_before:.3f} of {budget:g} spent), above the site's max-noise-multiplier "
                f"{terms.max_noise_multiplier:g}; the hospital refuses to train on noise (its operator may "
                "raise privacy.budget or privacy.max-noise-multiplier in the site policy)")
    planned = ([(sigma, req.sample_rate, int(req.local_steps))] if req.sample_level else []) + client
    eps_after = epsilon_of(history + planned, delta, acc)
    run_eps_after = epsilon_of(run_history + planned, delta, acc)
    if eps_after > budget * (1 + 1e-9):
        raise PrivacyBudgetExceeded(
            f"privacy budget exceeded: this round would bring epsilon from {eps_before:.3f} to {eps_after:.3f} "
            f"(delta {delta:g}), above the hospital's budget of {budget:g}; the hospital refuses to train "
            "(its operator may raise privacy.budget in the site policy, or leave the federation)")
    if _capped(terms) and run_eps_after > terms.run_cap * (1 + 1e-9):
        raise PrivacyBudgetExceeded(
            f"privacy run cap exceeded: this round would bring this run's epsilon to {run_eps_after:.3f}, above "
            f"the hospital's per-run cap of {terms.run_cap:g}; the hospital refuses to train")
    return Reservation(req.run_id, req.server_round, sigma, req.sample_rate, int(req.local_steps),
                       req.client_sigma if req.client_level else 0.0, delta, acc, budget, eps_before, eps_after,
                       run_eps_after, float(terms.run_cap))


def _choose_sigma(data, req: RoundRequest, terms, history, run_history, client) -> float:
    """Fixed sigma, this run's sigma (chosen at its first round), or calibrated now for the run's horizon
    so that neither the lifetime budget nor the per-run cap is passed."""
    if req.sigma > 0:
        return float(req.sigma)
    if req.run_id in data.runs:
        return float(data.runs[req.run_id]["noise_multiplier"])
    horizon = max(int(req.remaining_steps), int(req.local_steps))
    # The client-level release repeats every round; calibrating with one copy of it is a lower bound on
    # sigma, and the per-round check catches the rest.
    try:
        sigma = calibrate_noise(history + client, sample_rate=req.sample_rate, steps=horizon,
                                budget=float(terms.budget), delta=terms.delta, accountant=terms.accountant)
        if _capped(terms):
            sigma = max(sigma, calibrate_noise(run_history + client, sample_rate=req.sample_rate, steps=horizon,
                                               budget=terms.run_cap, delta=terms.delta,
                                               accountant=terms.accountant))
    except PrivacyBudgetExceeded as exc:
        raise PrivacyBudgetExceeded(f"{exc}; this hospital refuses to train") from None
    if not terms.run_cap:
        log.warning("run %s: the site policy has a privacy budget but no privacy.run-cap: the noise is calibrated "
                    "to spend everything left of the lifetime budget in this run (set privacy.run-cap, or "
                    "privacy.run-cap = \"all\" to confirm)", req.run_id)
    data.runs[req.run_id] = {"noise_multiplier": sigma, "sample_rate": req.sample_rate, "horizon_steps": horizon}
    log.info("run %s: noise multiplier %.4f calibrated for %d steps at q=%.4g within epsilon %.3g", req.run_id,
             sigma, horizon, req.sample_rate, terms.budget)
    return sigma


def _capped(terms) -> bool:
    """A finite per-run cap applies (``run-cap`` 0 is unset, ``math.inf`` is "all": only the budget limits)."""
    return 0 < terms.run_cap < math.inf


def check_unit(previous: set[str], unit: str, required: str = "auto") -> None:
    """Refuse a round whose privacy unit differs from earlier releases' (or from the policy's).

    Why refuse rather than convert: a patient-level release does not bound the effect of changing one image
    of a patient (that is a *replacement* of the unit), and an image-level release bounds a patient with k
    images only through group privacy (k times epsilon, with a worse delta). Neither composes with the other
    in one ledger without an analysis this code does not do, so the ledger never mixes them.
    """
    if required != "auto" and unit != required:
        raise UnitMismatch(
            f"privacy: the site policy requires privacy.unit = {required!r}, but this site's training data gives "
            f"{unit!r} units" + (" (no record carries a patient id: add patient_id to the manifest, or DICOM "
                                 "PatientID)" if required == "patient" else ""))
    other = previous - {unit}
    if other:
        raise UnitMismatch(
            f"privacy: this round would release {unit}-level DP but the ledger already holds {sorted(other)[0]}-level "
            "releases; one ledger never mixes privacy units (their epsilons do not compose). Restore the earlier "
            "unit (patient ids in the manifest or not), or set the same privacy.unit in the site policy")


def withdraw_round(state_dir: Path, reservation: Reservation, why: str) -> None:
    """The reserved round's output never left and was never saved (its run stopped first): its releases stop
    counting, marked withdrawn with ``why`` (:meth:`~xr0_core.privacy.ledger.PrivacyLedger.withdraw`)."""
    PrivacyLedger(state_dir).withdraw(reservation.run_id, reservation.server_round, why)
    log.info("round %d of run %s withdrawn from the ledger: %s", reservation.server_round, reservation.run_id, why)


def commit_round(state_dir: Path, reservation: Reservation, note: str = "") -> tuple[float, float]:
    """Mark the reserved releases committed; return epsilon now over every release and over this run's (at the
    reservation's delta). ``note``: recorded with them (e.g. charged although the run had stopped)."""
    ledger = PrivacyLedger(state_dir)
    ledger.commit(reservation.run_id, reservation.server_round, note)
    data = ledger.read()
    eps = ledger.epsilon(data, delta=reservation.delta, accountant=reservation.accountant)
    if math.isinf(eps):
        raise PrivacyError("the ledger's epsilon is infinite (a release without noise): refusing to release")
    run_eps = ledger.epsilon(data, delta=reservation.delta, accountant=reservation.accountant,
                             run_id=reservation.run_id)
    return eps, run_eps
