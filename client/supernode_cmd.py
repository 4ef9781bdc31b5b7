"""``xr0 site supernode``: the hospital's SuperNode under a supervisor that notices a revocation; and the
admission check of ``xr0 site doctor``. Both ask the SuperLink with the node key (:mod:`client.node_link`), so
they live here (``xr0_core`` never imports Flower) and join the ``xr0 site`` commands of
:mod:`xr0_core.cli.site` when the ``xr0`` entry point registers them.

``xr0 site supernode --state-dir S --data D --superlink HOST:PORT --root-certificates ca.crt --key KEY
[--port P] [--manifest M] [--node-config '...'] [-- FLOWER-SUPERNODE FLAGS]``

1. writes ``S/supernode.json`` (where the SuperLink is, which key): the ClientApp asks the SuperLink whether a
   run still runs before it charges a DP round (:mod:`client.node_link`);
2. asks whether the key is admitted; a key the SuperLink does not accept exits 3 at once ("not admitted"),
   instead of a SuperNode that exits 1 after a page of retries;
3. runs ``flower-supernode`` with the hospital's node config (``data-path``, ``state-dir``), forwarding SIGTERM
   and SIGINT to it;
4. when the SuperNode exits without being asked to, asks again: revoked by the coordinator -> exit 3 with that
   reason (Flower 1.42's SuperNode exits 0, "terminated gracefully", when its key is unregistered, so a service
   manager restarting on failure never noticed); otherwise the SuperNode's own exit status.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from xr0_core.cli import CLIError

EXIT_REVOKED = 3  # the SuperLink does not accept this hospital's node key (revoked, or never admitted)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``supernode`` to the ``xr0 site`` commands and the admission check to ``xr0 site doctor``."""
    from xr0_core.cli.site import site_commands

    site_sub = site_commands(subparsers)
    p = site_sub.add_parser(
        "supernode", help="run this hospital's SuperNode; exit 3 when the coordinator revokes it",
        description="Runs flower-supernode with this hospital's node config and key, and exits 3 with 'revoked by "
                    "the coordinator' when the SuperLink no longer accepts the key. Flags after -- go to "
                    "flower-supernode unchanged.")
    p.add_argument("--state-dir", type=Path, required=True, help="the hospital's state folder")
    p.add_argument("--data", type=Path, required=True, help="the data folder (node config data-path)")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the coordinator's SuperLink")
    p.add_argument("--root-certificates", type=Path, required=True, help="the coordinator's ca.crt")
    p.add_argument("--key", type=Path, required=True, help="the node private key (xr0 certs site)")
    p.add_argument("--port", type=int, default=None, help="the SuperNode's local runtime API port (default 9094)")
    p.add_argument("--manifest", type=Path, default=None, help="node config manifest")
    p.add_argument("--node-config", default="", help="more node config entries, e.g. 'gpus=2'")
    p.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then flags for flower-supernode")
    p.set_defaults(func=_supernode)
    site_sub.choices["doctor"].set_defaults(admission_check=doctor_admission)


def _flower_supernode() -> str:
    here = Path(sys.executable).with_name("flower-supernode")
    found = str(here) if here.is_file() else shutil.which("flower-supernode")
    if not found:
        raise CLIError("flower-supernode is not installed in this environment (pip install -e . installs it)")
    return found


def supernode_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-supernode`` command line for ``args``."""
    state, data = args.state_dir.expanduser().resolve(), args.data.expanduser().resolve()
    node = f'data-path="{data}" state-dir="{state}"'
    if args.manifest:
        node += f' manifest="{args.manifest.expanduser().resolve()}"'
    if args.node_config:
        node += " " + args.node_config
    cmd = [_flower_supernode(), "--superlink", args.superlink,
           "--root-certificates", str(args.root_certificates.expanduser().resolve()),
           "--auth-supernode-private-key", str(args.key.expanduser().resolve()), "--node-config", node]
    if args.port:
        cmd += ["--port", str(args.port)]
    extra = list(args.flower_args or [])
    return cmd + (extra[1:] if extra[:1] == ["--"] else extra)


def _revoked_message(detail: str, key: Path) -> str:
    return (f"xr0 site supernode: revoked by the coordinator (or never admitted): {detail}. Ask the coordinator; "
            f"to rejoin after a revocation make a new node key (xr0 certs site --out {key.parent} --name {key.name} "
            "--replace) and send the new .pub (Flower never accepts a revoked key again)")


def _supernode(args: argparse.Namespace) -> int:
    from .node_link import NodeLink, admission, known_node_id

    state = args.state_dir.expanduser().resolve()
    if not state.is_dir():
        raise CLIError(f"--state-dir {state} does not exist (mkdir -m 700 {state})")
    link = NodeLink(args.superlink, args.root_certificates.expanduser().resolve(), args.key.expanduser().resolve())
    link.write(state)
    status, detail = admission(link, known_node_id(state), remember=state)
    if status == "not-admitted":
        print(_revoked_message(detail, link.key), file=sys.stderr)
        return EXIT_REVOKED
    if status == "online":
        print(f"xr0 site supernode: {detail}: stop the other SuperNode first", file=sys.stderr)
        return 1
    cmd = supernode_command(args)
    child = subprocess.Popen(cmd)
    asked = {"stop": False}

    def forward(signum, _frame):
        asked["stop"] = True
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if asked["stop"]:
        return rc if rc > 0 else 0
    status, detail = admission(link, known_node_id(state))
    if status == "not-admitted":
        print(_revoked_message(detail, link.key), file=sys.stderr)
        return EXIT_REVOKED
    return rc


def doctor_admission(args: argparse.Namespace, out) -> None:
    """``xr0 site doctor``'s question to the SuperLink: is this node key admitted? (Findings in ``out``.)"""
    if not (args.key and args.superlink and args.root_certificates) or out.problems:
        return  # needs all three, and a SuperLink the TLS check reached
    from .node_link import NodeLink, admission, known_node_id

    link = NodeLink(args.superlink, args.root_certificates.expanduser().resolve(), args.key.expanduser().resolve())
    status, detail = admission(link, known_node_id(args.state_dir.expanduser()), remember=args.state_dir.expanduser())
    if status == "not-admitted":
        out.problems.append(f"{detail}: send {link.key.name}.pub to the coordinator (xr0 coordinator admit); after "
                            "a revocation make a new key first (xr0 certs site --replace)")
    elif status == "online":
        out.notes.append(detail)
    elif status == "admitted":
        out.notes.append(detail)
