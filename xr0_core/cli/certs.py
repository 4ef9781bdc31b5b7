"""``xr0 certs``: the credentials of a real federation (xr0_core/deploy/certs.py).

Coordinator::

    xr0 certs ca --out DIR                              DIR/ca.crt (to every hospital), DIR/ca.key (0600)
    xr0 certs superlink --out DIR --san HOST [--san ..] DIR/superlink.crt, DIR/superlink.key (0600)

Hospital (the private key never leaves; send ``NAME.pub`` to the coordinator)::

    xr0 certs site --out DIR --name NAME                DIR/NAME (0600), DIR/NAME.pub

Existing files are never overwritten: the command refuses, or with ``--replace`` moves them aside to
``<file>.replaced-<time>`` and says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xr0_core.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    certs = subparsers.add_parser("certs", help="make the CA, SuperLink certificate and hospital node keys")
    certs.set_defaults(func=lambda args: (certs.print_help(sys.stderr), 2)[1])
    sub = certs.add_subparsers(dest="certs_command", metavar="SUBCOMMAND")

    ca = sub.add_parser("ca", help="coordinator: a new CA (ca.crt goes to every hospital)")
    ca.add_argument("--out", type=Path, required=True, help="folder for ca.crt and ca.key")
    ca.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    ca.set_defaults(func=_ca)

    sl = sub.add_parser("superlink", help="coordinator: the SuperLink's TLS certificate, signed by the CA in --out")
    sl.add_argument("--out", type=Path, required=True, help="folder holding ca.crt/ca.key; gets superlink.crt/.key")
    sl.add_argument("--san", action="append", default=[], required=True,
                    help="a host name or IP address hospitals dial (repeatable; every one must be listed)")
    sl.add_argument("--days", type=int, default=825, help="validity (default 825, capped by the CA's)")
    sl.set_defaults(func=_superlink)

    site = sub.add_parser("site", help="hospital: this site's node key pair (send NAME.pub to the coordinator)")
    site.add_argument("--out", type=Path, required=True, help="folder for the key pair (keep it with the state)")
    site.add_argument("--name", required=True, help="file name of the key pair, e.g. the site's name")
    site.set_defaults(func=_site)

    for p in (ca, sl, site):
        p.add_argument("--replace", action="store_true",
                       help="move existing files aside (<file>.replaced-<time>) instead of refusing")


def _report(written) -> int:
    for old, aside in written.replaced:
        print(f"[xr0] moved the existing {old} aside to {aside}", file=sys.stderr)
    for path in written.files:
        print(f"[xr0] wrote {path} (mode {path.stat().st_mode & 0o777:o})", file=sys.stderr)
    return 0


def _call(fn, *args, **kwargs) -> int:
    from xr0_core.deploy.certs import CredentialError

    try:
        return _report(fn(*args, **kwargs))
    except CredentialError as exc:
        raise CLIError(str(exc)) from None


def _ca(args: argparse.Namespace) -> int:
    from xr0_core.deploy.certs import make_ca

    return _call(make_ca, args.out, days=args.days, replace=args.replace)


def _superlink(args: argparse.Namespace) -> int:
    from xr0_core.deploy.certs import make_superlink_cert

    return _call(make_superlink_cert, args.out, args.san, days=args.days, replace=args.replace)


def _site(args: argparse.Namespace) -> int:
    from xr0_core.deploy.certs import make_site_key

    rc = _call(make_site_key, args.out, args.name, replace=args.replace)
    print(f"[xr0] send {args.out / (args.name + '.pub')} to the coordinator; keep {args.out / args.name} here",
          file=sys.stderr)
    return rc
