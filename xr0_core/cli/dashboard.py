"""``xr0 dashboard`` (coordinator) and ``xr0 site dashboard`` (hospital): a live, read-only web page.

``xr0 dashboard --run-dir DIR`` follows a running or finished federation from the coordinator's files
(``federation.out-dir``: metrics.json, events.jsonl, run.json, checkpoints/); ``xr0 site dashboard
--state-dir DIR`` shows a hospital its own ledger, policy, audit log and refusals. Both bind 127.0.0.1 by
default; ``--host`` for any other address needs a token (xr0_core/dashboard/serve.py). ``--json`` prints the
state once and exits (what the page would show, for scripts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xr0_core.cli import CLIError, print_json


def _common(p: argparse.ArgumentParser) -> None:
    from xr0_core.dashboard.serve import DEFAULT_PORT, TOKEN_ENV

    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a token: --token-file, "
                        f"${TOKEN_ENV}, else a random one printed in the URL)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--token-file", type=Path, default=None, help="file holding the access token (>= 16 characters)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks of the files (default 1)")
    p.add_argument("--url-file", type=Path, default=None, help="also write the page's URL to this file (mode 0600)")
    p.add_argument("--json", action="store_true", help="print the current state as JSON on stdout and exit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="live web page of a federation (coordinator; read-only)",
                       description="Serve a local web page that follows a running or finished federation from the "
                                   "files its coordinator writes: rounds and ETA, every hospital's status with "
                                   "refusal and drop reasons, epsilon and budget, secure-aggregation "
                                   "participation, loss and SSL-health curves, evaluation verdicts, the config.")
    p.add_argument("--run-dir", type=Path, required=True,
                   help="the coordinator's output folder (federation.out-dir; xr0 simulate's --out)")
    _common(p)
    p.set_defaults(func=run_coordinator)


def register_site(site_sub: argparse._SubParsersAction) -> None:
    p = site_sub.add_parser("dashboard", help="live web page of this hospital's ledger, policy and audit log",
                            description="Serve a local, read-only web page of a hospital's state folder: every "
                                        "privacy release, epsilon over time and budget left (as xr0 privacy), the "
                                        "policy in force, the audit log of what left the hospital, and refusals.")
    p.add_argument("--state-dir", type=Path, required=True, help="the hospital's state folder (node config state-dir)")
    _common(p)
    p.set_defaults(func=run_site)


def run_coordinator(args: argparse.Namespace) -> int:
    from xr0_core.dashboard.run_view import RunView

    if args.run_dir.exists() and not args.run_dir.is_dir():
        raise CLIError(f"--run-dir {args.run_dir} is a file; give the coordinator's output folder")
    return _serve(RunView(args.run_dir), args)


def run_site(args: argparse.Namespace) -> int:
    from xr0_core.dashboard.site_view import SiteView

    if not args.state_dir.is_dir():
        raise CLIError(f"--state-dir {args.state_dir} is not a folder: give the hospital's state folder (the "
                       "SuperNode's node config state-dir)")
    return _serve(SiteView(args.state_dir), args)


def _serve(view, args: argparse.Namespace) -> int:
    from xr0_core.dashboard.app import DashboardError
    from xr0_core.dashboard.serve import resolve_token, serve

    if args.json:
        print_json(view.state())
        return 0
    try:
        token = resolve_token(args.host, args.token_file)

        def announce(url: str) -> None:
            print(f"[xr0] dashboard of {view.dir}: {url}  (read-only; Ctrl-C stops it)", file=sys.stderr, flush=True)

        serve(view, host=args.host, port=args.port, token=token, poll=args.poll, announce=announce,
              url_file=args.url_file)
    except DashboardError as exc:
        raise CLIError(str(exc)) from None
    return 0
