"""``xr0 privacy``: a hospital's privacy ledger -- every release, epsilon spent and left (docs/privacy.md)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from xr0_core.cli import CLIError, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("privacy", help="show (or set the budget of) a hospital's privacy ledger",
                       description="Show a hospital's privacy ledger: every release of trained weights, "
                                   "epsilon spent at the site's delta, and what is left of its budget. The "
                                   "budget, delta and accountant live in the site policy (xr0 site policy).")
    p.add_argument("--state-dir", type=Path, required=True, help="the hospital's state folder (node config state-dir)")
    p.add_argument("--set-budget", type=float, default=None, metavar="EPSILON",
                   help="set the site policy's privacy.budget (same as xr0 site policy --set privacy.budget=E)")
    p.add_argument("--delta", type=float, default=None, help="with --set-budget: the site policy's privacy.delta")
    p.add_argument("--accountant", choices=("rdp", "prv"), default=None,
                   help="with --set-budget: the site policy's privacy.accountant")
    p.add_argument("--json", action="store_true", help="print the ledger as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from xr0_core.privacy.ledger import PrivacyError, PrivacyLedger
    from xr0_core.site.ledger_summary import ledger_summary
    from xr0_core.site.policy import PolicyError, policy_path, run_cap_advice, save_policy, with_values
    from xr0_core.site.state import site_policy

    ledger = PrivacyLedger(args.state_dir)
    try:
        policy = site_policy(args.state_dir)
        if args.set_budget is not None:
            changes = {"privacy.budget": args.set_budget}
            if args.delta is not None:
                changes["privacy.delta"] = args.delta
            if args.accountant:
                changes["privacy.accountant"] = args.accountant
            new = with_values(policy, changes)
            if new.privacy.run_cap_missing:
                raise CLIError(run_cap_advice(new.privacy).replace("--set ", "xr0 site policy --set ")
                               + " (nothing was written)")
            policy = save_policy(new, policy_path(args.state_dir))
        elif not ledger.exists() and not _is_state_dir(args.state_dir, policy):
            raise CLIError(f"{args.state_dir} holds no privacy ledger, site identity (site.json) or site policy: "
                           "is this the hospital's state-dir (the SuperNode's node config state-dir)?")
        data = ledger.read()
        body = ledger_summary(ledger, data, policy)
    except (PrivacyError, PolicyError) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print_json(body)
        return 0
    p, eps, releases, unit = policy.privacy, body["epsilon"], body["releases"], body["unit"]
    left = (p.budget - eps) if p.budget is not None else math.nan
    print(f"privacy ledger {ledger.path}", file=sys.stderr)
    print(f"unit {unit or '?'}, accountant {p.accountant}, delta {p.delta:g} (site policy)", file=sys.stderr)
    print(f"{'run':<18}{'round':>6}{'kind':>8}{'sigma':>10}{'q':>10}{'steps':>7}{'status':>11}", file=sys.stderr)
    for r in data.releases:
        print(f"{r.run_id:<18}{r.round:>6}{r.kind:>8}{r.noise_multiplier:>10.4f}{r.sample_rate:>10.4g}{r.steps:>7}"
              f"{r.status:>11}" + (f"  ({r.note})" if r.note else ""), file=sys.stderr)
    if not releases:
        print("no releases yet: this hospital has not trained under differential privacy", file=sys.stderr)
    print(f"epsilon spent {eps:.4f} of budget {p.budget} (left {left:.4f}) over {len(releases)} releases"
          + (f"; per-run cap {p.run_cap:g}" if p.capped else "; run cap: all (one run may spend what is left)"
             if p.run_cap else "; no per-run cap (xr0 site policy --set privacy.run-cap=...)"), file=sys.stderr)
    return 0


def _is_state_dir(state_dir: Path, policy) -> bool:
    """A state folder that has not run DP yet has a site identity or a policy file, but no ledger."""
    from xr0_core.site.state import IDENTITY_FILE

    return (Path(state_dir) / IDENTITY_FILE).is_file() or bool(policy.path)
