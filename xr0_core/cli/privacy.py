"""``xr0 privacy``: a hospital's privacy ledger -- every release, epsilon spent and left (docs/privacy.md)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from xr0_core.cli import CLIError, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("privacy", help="show (or set the budget of) a hospital's privacy ledger",
                       description="Show a hospital's privacy ledger: every release of trained weights, "
                                   "epsilon spent at the site's delta, and what is left of its budget.")
    p.add_argument("--state-dir", type=Path, required=True, help="the hospital's state folder (node config state-dir)")
    p.add_argument("--set-budget", type=float, default=None, metavar="EPSILON",
                   help="record the hospital's own total epsilon (a node-config privacy-budget overrides it)")
    p.add_argument("--delta", type=float, default=None, help="with --set-budget: the hospital's delta (default 1e-5)")
    p.add_argument("--accountant", choices=("rdp", "prv", "gdp"), default=None,
                   help="with --set-budget: accountant used for epsilon (default: the ledger's, rdp)")
    p.add_argument("--json", action="store_true", help="print the ledger as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from xr0_core.privacy.ledger import PrivacyError, PrivacyLedger

    ledger = PrivacyLedger(args.state_dir)
    try:
        if args.set_budget is not None:
            current = ledger.read()
            delta = args.delta if args.delta is not None else (current.delta or 1e-5)
            ledger.set_budget(args.set_budget, delta, args.accountant)
        elif not ledger.exists():
            raise CLIError(f"no privacy ledger in {args.state_dir} (expected {ledger.path}); "
                           "is this the hospital's state-dir?")
        data = ledger.read()
        eps = ledger.epsilon(data) if data.delta is not None else 0.0
    except PrivacyError as exc:
        raise CLIError(str(exc)) from None
    releases = [{"noise_multiplier": r.noise_multiplier, "sample_rate": r.sample_rate, "steps": r.steps,
                 "run_id": r.run_id, "round": r.round, "kind": r.kind, "delta": r.delta, "time": r.time}
                for r in data.releases]
    if args.json:
        print_json({"delta": data.delta, "epsilon": eps, "budget": data.budget, "accountant": data.accountant,
                    "unit": data.unit, "releases": releases})
        return 0
    left = (data.budget - eps) if data.budget is not None else math.nan
    print(f"privacy ledger {ledger.path}", file=sys.stderr)
    print(f"unit {data.unit or '?'}, accountant {data.accountant}, delta {data.delta}", file=sys.stderr)
    print(f"{'run':<18}{'round':>6}{'kind':>8}{'sigma':>10}{'q':>10}{'steps':>7}", file=sys.stderr)
    for r in data.releases:
        print(f"{r.run_id:<18}{r.round:>6}{r.kind:>8}{r.noise_multiplier:>10.4f}{r.sample_rate:>10.4g}{r.steps:>7}",
              file=sys.stderr)
    print(f"epsilon spent {eps:.4f} of budget {data.budget} (left {left:.4f}) over {len(releases)} releases",
          file=sys.stderr)
    return 0
