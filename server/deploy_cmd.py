"""``xr0 coordinator ...``: the coordinator's side of a real deployment (docs/deploy-coordinator.md).

``xr0 coordinator connect --name NAME --superlink HOST:PORT --root-certificates ca.crt``
    Writes the SuperLink connection ``[superlink.NAME]`` into ``$FLWR_HOME/config.toml`` (Flower 1.42's
    connection config; ``FLWR_HOME`` defaults to ``~/.flwr``) with Flower's own writer. The project's
    pyproject.toml holds no ``[tool.flwr.federations]`` table, so ``flwr run`` finds nothing to migrate and
    never rewrites a tracked file.

``xr0 coordinator admit NAME --key SITE.pub [--name SITE]`` / ``revoke NAME SITE`` / ``sites NAME``
    The hospitals' table (:mod:`server.sites`): admit a node key under the hospital's name (idempotent), revoke
    by name, list name, node id, status, key fingerprint and last seen.

``xr0 coordinator status NAME [--run-id ID] [--wait] [--out DIR]``
    Wraps ``flwr ls NAME --format json``: one line per run; with ``--run-id`` the exit code says how that run
    ended (``flwr run`` itself exits 0 as soon as the run is submitted, whatever happens after): 0 completed
    (or still running without ``--wait``), 1 failed or stopped, 2 the SuperLink could not be asked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from xr0_core.cli import CLIError, print_json

EXIT_OK, EXIT_RUN_FAILED, EXIT_ERROR = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    co = subparsers.add_parser("coordinator", help="coordinator: SuperLink connection and run status")
    co.set_defaults(func=lambda args: (co.print_help(sys.stderr), 2)[1])
    sub = co.add_subparsers(dest="coordinator_command", metavar="SUBCOMMAND")

    con = sub.add_parser("connect", help="write the SuperLink connection into $FLWR_HOME/config.toml")
    con.add_argument("--name", required=True, help="connection name used by flwr run / ls / stop, e.g. xr0")
    con.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink (as in its TLS certificate)")
    con.add_argument("--root-certificates", type=Path, default=None, help="the coordinator CA (ca.crt)")
    con.add_argument("--insecure", action="store_true", help="no TLS (local tests only; never across sites)")
    con.add_argument("--default", action="store_true", help="also make it the default connection")
    con.set_defaults(func=_connect)

    st = sub.add_parser("status", help="how runs went (flwr ls); exit 1 when the run failed or was stopped")
    st.add_argument("connection", help="connection name (xr0 coordinator connect --name)")
    st.add_argument("--run-id", default=None, help="one run (its exit code then says how it ended)")
    st.add_argument("--wait", action="store_true", help="with --run-id: wait until the run has finished")
    st.add_argument("--timeout", type=float, default=0.0, help="with --wait: give up after S seconds (0: never)")
    st.add_argument("--poll", type=float, default=5.0, help="with --wait: seconds between checks (default 5)")
    st.add_argument("--json", action="store_true", help="print flwr's run records as JSON on stdout")
    st.add_argument("--out", type=Path, default=None,
                    help="the run's federation.out-dir: also show each hospital (name, node id, last round, "
                         "epsilon this run, run cap, budget left) from its metrics.json")
    st.set_defaults(func=_status)

    ad = sub.add_parser("admit", help="admit a hospital's node key under its name (flwr supernode register)")
    ad.add_argument("connection", help="connection name (xr0 coordinator connect --name)")
    ad.add_argument("--key", type=Path, required=True, help="the hospital's NAME.pub (xr0 certs site)")
    ad.add_argument("--name", default="", help="the hospital's name in reports (default: the one in the key)")
    ad.add_argument("--json", action="store_true", help="print the node id as JSON on stdout")
    ad.set_defaults(func=_admit)

    rv = sub.add_parser("revoke", help="revoke a hospital by name (flwr supernode unregister)")
    rv.add_argument("connection", help="connection name")
    rv.add_argument("site", help="the hospital's name (or node id)")
    rv.set_defaults(func=_revoke)

    ls = sub.add_parser("sites", help="admitted hospitals: name, node id, status, key fingerprint, last seen")
    ls.add_argument("connection", help="connection name")
    ls.add_argument("--all", action="store_true", help="also revoked ones")
    ls.add_argument("--json", action="store_true", help="print them as JSON on stdout")
    ls.set_defaults(func=_sites)


def flwr_exe() -> str:
    """The ``flwr`` CLI of this environment (next to the Python running xr0), else the one on PATH."""
    here = Path(sys.executable).with_name("flwr")
    found = str(here) if here.is_file() else shutil.which("flwr")
    if not found:
        raise CLIError("the flwr command is not installed in this environment (pip install -e . installs it)")
    return found


def _connect(args: argparse.Namespace) -> int:
    from flwr.cli.flower_config import (init_flwr_config, set_default_superlink_connection,
                                        write_superlink_connection)
    from flwr.cli.typing import SuperLinkConnection

    host, sep, port = args.superlink.rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in args.superlink:
        raise CLIError(f"--superlink {args.superlink!r}: give HOST:PORT without a scheme, e.g. coordinator.example.org:8000")
    if args.insecure == bool(args.root_certificates):
        raise CLIError("give --root-certificates ca.crt (TLS), or --insecure for a local test; not both")
    roots = None
    if args.root_certificates:
        roots = args.root_certificates.expanduser().resolve()
        if not roots.is_file():
            raise CLIError(f"--root-certificates {roots} does not exist (xr0 certs ca --out DIR makes DIR/ca.crt)")
    init_flwr_config()
    conn = SuperLinkConnection(name=args.name, address=args.superlink,
                               root_certificates=str(roots) if roots else None, insecure=bool(args.insecure))
    write_superlink_connection(conn)
    if args.default:
        set_default_superlink_connection(args.name)
    home = os.environ.get("FLWR_HOME") or str(Path.home() / ".flwr")
    print(f"[xr0] connection {args.name!r} -> {args.superlink} written to {Path(home) / 'config.toml'}", file=sys.stderr)
    return EXIT_OK


def list_runs(connection: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """``flwr ls CONNECTION --format json`` as a list of run records (flwr's keys: run-id, status, ...)."""
    cmd = [flwr_exe(), "ls", connection, "--format", "json"] + (["--run-id", str(run_id)] if run_id else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    try:
        body = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        body = {}
    if proc.returncode != 0 or not body.get("success", False):
        why = body.get("error-message") or (proc.stderr or proc.stdout).strip()[-600:]
        raise CLIError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}): {why}")
    return list(body.get("runs", []))


def run_outcome(status: str) -> int:
    """Exit code for one run's ``status`` text (``finished:completed``, ``finished:failed``, ``running``...)."""
    if status.startswith("finished"):
        return EXIT_OK if status.endswith(":completed") else EXIT_RUN_FAILED
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    if args.wait and not args.run_id:
        raise CLIError("--wait needs --run-id")
    start = time.monotonic()
    while True:
        try:
            runs = list_runs(args.connection, args.run_id)
        except CLIError as exc:
            print(f"xr0: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        done = all(str(r.get("status", "")).startswith("finished") for r in runs)
        if not args.wait or done:
            break
        if args.timeout and time.monotonic() - start > args.timeout:
            print(f"xr0: error: run {args.run_id} still {runs[0].get('status') if runs else 'unknown'} after "
                  f"{args.timeout:g} s", file=sys.stderr)
            return EXIT_ERROR
        time.sleep(args.poll)  # polling the SuperLink; flwr has no wait call
    if args.json:
        print_json({"runs": runs})
    for r in runs:
        details = f" ({r['status-details']})" if r.get("status-details") else ""
        print(f"run {r.get('run-id')}  {r.get('fab-id')}=={r.get('fab-version')}  {r.get('status')}{details}  "
              f"elapsed {r.get('elapsed')}", file=sys.stderr if args.json else sys.stdout)
    if args.out is not None:
        for line in hospital_lines(args.out):
            print(line, file=sys.stderr if args.json else sys.stdout)
    if not args.run_id:
        return EXIT_OK
    if not runs:
        print(f"xr0: error: no run {args.run_id} on {args.connection}", file=sys.stderr)
        return EXIT_ERROR
    return run_outcome(str(runs[0].get("status", "")))


def hospital_lines(out: Path) -> list[str]:
    """One line per hospital from a run's ``metrics.json``: name, node id, its last train round's status (and
    reason), epsilon this run against its run cap, and the lifetime budget left (as far as its policy lets
    epsilon leave)."""
    path = Path(out) / "metrics.json"
    try:
        rounds = json.loads(path.read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return [f"no metrics.json in {out} yet"]
    last: dict[str, dict[str, Any]] = {}
    for r in rounds:
        if r.get("kind") != "train":
            continue
        for site in r.get("sites", []):
            last[site["name"]] = {**site, "round": r["round"]}
    lines = []
    for name in sorted(last):
        s = last[name]
        m = s.get("metrics", {})
        text = f"hospital {name}  node {s.get('node_id')}  round {s['round']} {s['status']}"
        if s.get("reason") and s["status"] != "ok":
            text += f" ({s['reason']})"
        if "epsilon-run" in m:
            text += f"  epsilon this run {m['epsilon-run']:g}"
            if "privacy-run-cap" in m:
                text += f" of cap {m['privacy-run-cap']:g}"
        if "epsilon" in m and "privacy-budget" in m:
            text += f"  budget left {m['privacy-budget'] - m['epsilon']:g} of {m['privacy-budget']:g}"
        elif m.get("epsilon-withheld"):
            text += "  epsilon withheld by the hospital's policy"
        lines.append(text)
    return lines


def _admit(args: argparse.Namespace) -> int:
    from .sites import SitesError, admit

    try:
        _, node_id, what = admit(args.connection, args.key.expanduser(), args.name)
    except SitesError as exc:
        raise CLIError(str(exc)) from None
    print(f"[xr0] {what}", file=sys.stderr)
    if args.json:
        print_json({"node_id": node_id})
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    from .sites import SitesError, revoke

    try:
        site = revoke(args.connection, args.site)
    except SitesError as exc:
        raise CLIError(str(exc)) from None
    print(f"[xr0] revoked {site.name or 'node'} (node {site.node_id}, key {site.fingerprint}): its SuperNode is "
          "refused from now on and exits; to re-admit it, the hospital makes a new key (xr0 certs site --replace)",
          file=sys.stderr)
    return EXIT_OK


def _sites(args: argparse.Namespace) -> int:
    from .sites import SitesError, list_sites

    try:
        sites = [s for s in list_sites(args.connection) if args.all or s.active]
    except SitesError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print_json({"sites": [s.to_json() for s in sites]})
        return EXIT_OK
    print(f"{'name':<20}{'node id':<22}{'status':<14}{'last seen':<28}key")
    for s in sites:
        print(f"{s.name or '-':<20}{s.node_id:<22}{s.status:<14}{(s.last_seen or 'never'):<28}{s.fingerprint}")
    return EXIT_OK
