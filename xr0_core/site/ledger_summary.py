"""What a hospital's privacy ledger says under its policy, as one JSON-able dict: the body of
``xr0 privacy --json`` and the numbers of ``xr0 site dashboard`` (one function, so the two never disagree).

Read-only: :func:`read_only_policy` finds the policy in force without the one-time migrations that
:func:`xr0_core.site.state.site_policy` writes, so a viewer never changes the state folder it shows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from xr0_core.privacy.ledger import LedgerData, PrivacyLedger
from xr0_core.site.policy import SitePolicy, load_policy, policy_path


def ledger_summary(ledger: PrivacyLedger, data: LedgerData, policy: SitePolicy) -> dict[str, Any]:
    """``{"delta", "epsilon", "budget", "accountant", "unit", "releases", "policy"}``.

    ``epsilon`` is spent at the policy's delta with its accountant over every release, pending ones included
    (:meth:`PrivacyLedger.epsilon`); ``releases`` lists each release with its status; ``unit`` is the privacy
    unit of the releases (``mixed: ...`` when they differ, ``""`` before the first).
    """
    p = policy.privacy
    eps = ledger.epsilon(data, delta=p.delta, accountant=p.accountant)
    releases = [{"noise_multiplier": r.noise_multiplier, "sample_rate": r.sample_rate, "steps": r.steps,
                 "run_id": r.run_id, "round": r.round, "kind": r.kind, "delta": r.delta, "time": r.time,
                 "unit": r.unit or data.unit, "status": r.status, "sensitivity": r.effective_sensitivity,
                 "counts": r.counts, "note": r.note}
                for r in data.releases]
    units = sorted(data.release_units())
    unit = units[0] if len(units) == 1 else ("mixed: " + ", ".join(units) if units else "")
    return {"delta": p.delta, "epsilon": eps, "budget": p.budget, "accountant": p.accountant,
            "unit": unit, "releases": releases, "policy": policy.path or None}


def read_only_policy(state_dir: str | Path) -> tuple[SitePolicy, str]:
    """The policy in force at ``state_dir`` and a note on where it came from, writing nothing.

    A ledger from before site policies holds the budget itself: that budget applies (as
    :func:`~xr0_core.site.state.site_policy` would move it into a policy file on the next round); the note says
    so. A missing policy file while the ledger holds releases is the refusal
    :func:`~xr0_core.site.refusals.check_policy_file` raises (:class:`~xr0_core.site.policy.PolicyError`).
    """
    path = policy_path(state_dir)
    if path.is_file():
        return load_policy(path), ""
    ledger = PrivacyLedger(state_dir)
    legacy = ledger.read() if ledger.exists() else None
    if legacy is not None and legacy.budget is not None:
        accountant = legacy.accountant if legacy.accountant in ("rdp", "prv") else "rdp"
        policy = SitePolicy(privacy=dataclasses.replace(SitePolicy().privacy, budget=float(legacy.budget),
                                                        delta=float(legacy.delta or 1e-5), accountant=accountant))
        return policy, (f"no {path.name} yet: the budget in {ledger.path.name} applies (it moves into a policy "
                        "file at the next round)")
    from xr0_core.site.refusals import check_policy_file

    check_policy_file(path, Path(state_dir))
    return SitePolicy(), f"no {path.name}: the defaults apply (DP not required)"
