"""``xr0 site doctor`` (preflight before starting the SuperNode) and ``xr0 site secagg-key`` (the public signing
key the other hospitals pin in ``secagg.peer-keys``); see xr0_core/deploy/doctor.py and
xr0_core/secagg/identity.py. ``xr0 site app-version`` and ``xr0 site clientapp`` need Flower (its bundle builder,
its runtime API) and are registered from ``client/site_cmd.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xr0_core.cli import CLIError, print_json


def register(site_sub: argparse._SubParsersAction) -> None:
    d = site_sub.add_parser("doctor", help="preflight: state folder, policy, node key, CA, data, SuperLink",
                            description="Checks what the SuperNode will need; prints one line per problem and "
                                        "exits 1 if there is any.")
    d.add_argument("--state-dir", type=Path, required=True, help="the hospital's state folder (node config state-dir)")
    d.add_argument("--policy", type=Path, default=None, help="policy file (default STATE_DIR/policy.toml)")
    d.add_argument("--key", type=Path, default=None, help="the node private key (--auth-supernode-private-key)")
    d.add_argument("--root-certificates", type=Path, default=None, help="the coordinator's ca.crt")
    d.add_argument("--superlink", default=None, help="HOST:PORT the SuperNode dials")
    d.add_argument("--data", type=Path, default=None, help="the data folder (node config data-path)")
    d.add_argument("--json", action="store_true", help="print problems and notes as JSON on stdout")
    d.set_defaults(func=_doctor)

    k = site_sub.add_parser("secagg-key", help="this hospital's public signing key (for the others' secagg.peer-keys)",
                            description="Prints (making it on first use, mode 0600) the hospital's long-term "
                                        "Ed25519 signing key's public half, hex. Send it to the other hospitals over a "
                                        "channel where you can confirm it arrived unchanged; they pin it in "
                                        "secagg.peer-keys.")
    k.add_argument("--state-dir", type=Path, required=True, help="the hospital's state folder (node config state-dir)")
    k.set_defaults(func=_secagg_key)


def _doctor(args: argparse.Namespace) -> int:
    from xr0_core.deploy.doctor import doctor

    found = doctor(args.state_dir.expanduser(), args.key, args.root_certificates, args.superlink, args.data,
                   args.policy)
    admission = getattr(args, "admission_check", None)  # set by client/site_cmd.py: asks the SuperLink (Flower)
    if admission is not None:
        admission(args, found)
    if args.json:
        print_json({"problems": found.problems, "notes": found.notes})
    stream = sys.stderr if args.json else sys.stdout
    for line in found.problems:
        print(f"problem: {line}", file=stream)
    for line in found.notes:
        print(f"note: {line}", file=stream)
    print(f"site doctor: {len(found.problems)} problem(s)" if found.problems else "site doctor: ready", file=stream)
    return 1 if found.problems else 0


def _secagg_key(args: argparse.Namespace) -> int:
    from xr0_core.secagg.identity import load_or_create, public_of

    try:
        print(public_of(load_or_create(args.state_dir.expanduser())).hex())
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return 0
