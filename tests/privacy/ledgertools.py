"""A site's private round in a few lines, and epsilon recomputed without the ledger's code: shared by the
ledger, policy and site-state tests (and the subprocesses they kill)."""

from __future__ import annotations

from pathlib import Path

from xr0_core.site.policy import SitePolicy, load_policy, policy_path, save_policy, with_values
from xr0_core.site.round import run_site_round, site_trainer
from xr0_core.ssl.factory import initial_shared_state
from xr0_core.train.round_state import RoundSpec

from tests.privacy.dpdata import dp_cfg, patient_cache


def site_with_budget(state: Path, budget: float | None, **more) -> SitePolicy:
    """Write the hospital's own policy (its budget at delta 1e-5, plus ``more`` keys) and return it."""
    # Epsilon leaves exactly as the accountant has it, so tests can compare (the default rounds it up).
    more = {"release.epsilon": "exact", **more}
    values = {"privacy.budget": budget, "privacy.delta": 1e-5, **more} if budget is not None else dict(more)
    policy = with_values(load_policy(policy_path(state)), values)
    return save_policy(policy, policy_path(state))


def private_round(state: Path, run: str, rnd: int, cfg=None, budget=8.0, cache=None, **policy):
    """One private local round ``rnd`` of run ``run`` at the site in ``state`` (its policy: ``budget`` at delta
    1e-5 plus ``policy`` keys); returns what the site would send (shared weights, metrics)."""
    cfg = cfg or dp_cfg()
    tr = site_trainer(cfg, [], site="h", cache=cache or patient_cache([0, 0, 1, 2, 3, 4, 5, 6]))
    steps = cfg.train.local_steps
    spec = RoundSpec(rnd, (rnd - 1) * steps, 3 * steps, steps, run)
    return run_site_round(tr, initial_shared_state(cfg), spec, state, site_with_budget(state, budget, **policy))


def independent_epsilon(releases, delta):
    """Opacus's RDP analysis called directly on the ledger's releases (not through the ledger code)."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=r["sample_rate"], noise_multiplier=r["noise_multiplier"], steps=r["steps"], orders=orders)
              for r in releases)
    return get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]
