"""``xr0 site policy``: show or edit a hospital's site policy (what it allows; xr0_core/site/policy.py).

``xr0 site policy --state-dir DIR`` prints the policy in force (the file, or the defaults when there is
none) and epsilon spent against its budget; ``--set KEY=VALUE`` (repeatable) changes keys and writes the
file; ``--json`` prints it as JSON on stdout. A budget without ``privacy.run-cap`` is refused (the operator
sizes the cap or confirms ``privacy.run-cap=all``): otherwise the first run spends the whole lifetime budget. Keys are ``section.key`` as in the file
(``privacy.budget``, ``secagg.required``, ``release.train-metrics`` as a comma list, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from xr0_core.cli import CLIError, parse_sets, print_json


def register(site_sub: argparse._SubParsersAction) -> None:
    p = site_sub.add_parser(
        "policy", help="show or edit the hospital's site policy (privacy, secure aggregation, releases)",
        description="The site policy decides every parameter that protects this hospital; a coordinator's run "
                    "config may ask for more protection, never less.")
    p.add_argument("--state-dir", type=Path, required=True, help="the hospital's state folder (node config state-dir)")
    p.add_argument("--policy", type=Path, default=None, help="policy file (default STATE_DIR/policy.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a key, e.g. --set privacy.budget=8 --set secagg.required=true (repeatable)")
    p.add_argument("--json", action="store_true", help="print the policy as JSON on stdout")
    p.set_defaults(func=run)


def _reject_weaker_delta(old, new, spent_releases: int) -> None:
    if spent_releases and new.privacy.delta > old.privacy.delta:
        raise CLIError(f"privacy.delta cannot grow from {old.privacy.delta:g} to {new.privacy.delta:g} once the "
                       f"ledger holds {spent_releases} releases (their epsilon was accounted at the smaller delta)")


def run(args: argparse.Namespace) -> int:
    from xr0_core.privacy.ledger import PrivacyError, PrivacyLedger
    from xr0_core.site.policy import (PolicyError, load_policy, policy_path, run_cap_advice, save_policy, to_toml,
                                      with_values)
    from xr0_core.site.state import site_policy

    node = {"policy": str(args.policy)} if args.policy else {}
    path = policy_path(args.state_dir, node)
    ledger = PrivacyLedger(args.state_dir)
    try:
        policy = site_policy(args.state_dir, node)
        if args.set:
            new = with_values(policy, parse_sets(args.set))
            if new.privacy.run_cap_missing:  # the operator sizes the run cap, or confirms "all"
                raise CLIError(run_cap_advice(new.privacy) + " (nothing was written)")
            _reject_weaker_delta(policy, new, len(ledger.read().releases) if ledger.exists() else 0)
            policy = save_policy(new, path)
            print(f"[xr0] wrote {path}", file=sys.stderr)
        policy = load_policy(path) if path.is_file() else policy
        p = policy.privacy
        eps = (ledger.epsilon(delta=p.delta, accountant=p.accountant) if ledger.exists() else 0.0)
    except (PolicyError, PrivacyError) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        body = {s: dataclasses.asdict(getattr(policy, s)) for s in ("privacy", "secagg", "release", "evaluation",
                                                                    "apps")}
        if p.run_cap == math.inf:
            body["privacy"]["run_cap"] = "all"  # JSON has no infinity
        body.update({"path": str(path), "exists": path.is_file(), "epsilon_spent": eps,
                     "dp_required": p.dp_required})
        print_json(body)
        return 0
    print(f"# {path}" + ("" if path.is_file() else " (no file yet: defaults in force)"), file=sys.stderr)
    print(to_toml(policy), end="", file=sys.stderr)
    left = (p.budget - eps) if p.budget is not None else math.nan
    if p.run_cap_missing:
        print(f"# warning: {run_cap_advice(p)}", file=sys.stderr)
    print(f"# DP {'required' if p.dp_required else 'not required'}; epsilon spent {eps:.4f}"
          + (f" of {p.budget:g} (left {left:.4f})" if p.budget is not None else ""), file=sys.stderr)
    return 0
