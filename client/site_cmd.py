"""``xr0 site app-version`` and ``xr0 site clientapp``: the hospital's site commands that need Flower.

``xr0 site app-version [--app DIR | --fab FILE]``
    The version string of a reviewed checkout (the bundle ``flwr run DIR`` sends, built by Flower's own
    builder) or of a bundle file, for the policy's ``apps.allowed-versions`` (client/bundle.py,
    xr0_core/deploy/appversion.py).

``xr0 site clientapp [--runtime-api-address 127.0.0.1:PORT] [--superexec-auth-secret-file F]``
    Runs next to a SuperNode started with ``--isolation process``: checks every task's bundle against the
    site policy and answers with the hospital's installed ClientApp (client/launcher.py).

They join the ``xr0 site`` table that :mod:`xr0_core.cli.site` builds (``xr0_core`` never imports Flower);
the ``xr0`` entry point (:mod:`cli`) registers this module after the framework-free commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xr0_core.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    from xr0_core.cli.site import site_commands

    site_sub = site_commands(subparsers)
    v = site_sub.add_parser("app-version", help="the app version of a checkout or bundle (for apps.allowed-versions)",
                            description="Prints <project version>+<sha256> of the app bundle built from a checkout "
                                        "(as `flwr run DIR` builds it) or of a .fab file: every file of the bundle and "
                                        "its entry-point mapping. The hospital's launcher hashes the bundle it is sent "
                                        "the same way.")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--app", type=Path, default=None,
                     help="the reviewed checkout (default: the source tree this xr0 runs from)")
    src.add_argument("--fab", type=Path, default=None, help="a bundle file (flwr build)")
    v.set_defaults(func=_app_version)

    c = site_sub.add_parser("clientapp", help="the hospital's ClientApp launcher (SuperNode --isolation process)",
                            description="Asks this hospital's SuperNode (started with --isolation process) for "
                                        "ClientApp tasks; for each, checks the run's app bundle against the site "
                                        "policy's apps.allowed-versions before anything runs, then answers with "
                                        "this installation's ClientApp (never the bundle's code) or refuses with "
                                        "the reason. Keep it running beside the SuperNode.")
    c.add_argument("--runtime-api-address", default="127.0.0.1:9094",
                   help="the SuperNode's runtime API, HOST:PORT (flower-supernode --port; default 127.0.0.1:9094)")
    c.add_argument("--root-certificates", type=Path, default=None,
                   help="CA of the runtime API's TLS certificate (needed for an address off this host)")
    c.add_argument("--superexec-auth-secret-file", type=Path, default=None,
                   help="the shared secret file also given to flower-supernode: only its holders get tasks")
    c.add_argument("--poll", type=float, default=1.0, help="seconds between task requests (default 1)")
    c.set_defaults(func=_clientapp)


def _app_version(args: argparse.Namespace) -> int:
    from xr0_core.deploy.appversion import BundleError, fab_version

    from .bundle import checkout_version, installed_checkout

    try:
        if args.fab:
            print(fab_version(args.fab.expanduser().read_bytes()))
        else:
            print(checkout_version(args.app.expanduser() if args.app else installed_checkout()))
    except (BundleError, OSError) as exc:
        raise CLIError(str(exc)) from None
    return 0


def _clientapp(args: argparse.Namespace) -> int:
    import logging

    from .launcher import LauncherError, RuntimeAPI, serve

    if args.poll <= 0:
        raise CLIError(f"--poll must be > 0 seconds, got {args.poll}")
    try:
        certs = args.root_certificates.expanduser().read_bytes() if args.root_certificates else None
        secret = args.superexec_auth_secret_file.expanduser().read_bytes() if args.superexec_auth_secret_file else None
        if secret == b"":
            raise CLIError(f"{args.superexec_auth_secret_file} is empty: write a random secret into it "
                           "(e.g. head -c 32 /dev/urandom) and give the same file to flower-supernode")
        api = RuntimeAPI(args.runtime_api_address, certs, secret)
    except OSError as exc:
        raise CLIError(str(exc)) from None
    except LauncherError as exc:
        raise CLIError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return serve(api, cert_file=args.root_certificates.expanduser().resolve() if args.root_certificates else None,
                 poll=args.poll)
