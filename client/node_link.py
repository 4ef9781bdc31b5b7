"""The hospital's own questions to the SuperLink, signed with its node key (Flower's Fleet API).

Two things a hospital cannot learn from the messages it is sent, and asks the SuperLink itself:

- **Is this node still admitted?** :func:`admission`. A SuperNode whose key the coordinator unregisters exits
  with status 0 ("terminated gracefully") in Flower 1.42, so a service manager never notices; ``xr0 site
  supernode`` (:mod:`client.supernode_cmd`) asks after its SuperNode exits and turns a revocation into exit 3 with
  "revoked by the coordinator", and ``xr0 site doctor`` asks before the SuperNode starts.
- **Is this run still running?** :func:`run_status`. After ``flwr stop``, a hospital's SuperNode silently drops
  the reply of a round that was still training ("Run ... is not in RUNNING status. Ignoring reply"); under DP
  that reply's release was charged for nothing. The private round asks before it reserves, during training,
  and right before it commits (``xr0_core/site/round.py``), and withdraws a round whose run has stopped.

Both need where the SuperLink is and the node key: ``xr0 site supernode`` writes them to
``<state-dir>/supernode.json`` (:class:`NodeLink`) before it starts the SuperNode; a ClientApp without that
file (a SuperNode started by hand, or a simulation) does not ask and trains as before.

What is sent: Fleet calls signed with the node key as the SuperNode itself signs them (``ActivateNode`` then
``DeactivateNode``, exactly what a SuperNode does when it starts and stops, and ``GetRun``). Nothing about the
hospital's data.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

LINK_FILE = "supernode.json"  # in the state folder, written by `xr0 site supernode`
NODE_FILE = "node.json"  # in the state folder, written by the ClientApp: the node id the SuperLink gave it
PROBE_TIMEOUT = 10.0  # seconds for one signed call

Admission = Literal["admitted", "online", "not-admitted", "unreachable"]
RunStatus = Literal["running", "stopped", "revoked", "unknown"]

_RUN_STATUS_NOT_ALLOWED = 2007  # Flower's ApiErrorCode.FLEET_RUN_STATUS_NOT_ALLOWED: the run is not RUNNING


@dataclass(frozen=True)
class NodeLink:
    """Where this hospital's SuperNode connects, and with which key (``<state-dir>/supernode.json``)."""

    superlink: str
    root_certificates: Path
    key: Path

    def write(self, state_dir: str | Path) -> Path:
        from xr0_core.atomic import atomic_write_json

        path = Path(state_dir) / LINK_FILE
        atomic_write_json(path, {"superlink": self.superlink, "root_certificates": str(self.root_certificates),
                                 "key": str(self.key)})
        os.chmod(path, 0o600)
        return path

    @classmethod
    def read(cls, state_dir: str | Path) -> "NodeLink | None":
        """The link ``xr0 site supernode`` wrote, or None (no file, or one that is unreadable: then logged)."""
        path = Path(state_dir) / LINK_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["superlink"]), Path(raw["root_certificates"]), Path(raw["key"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s): not asking the SuperLink about runs or admission", path, exc)
            return None


def remember_node_id(state_dir: str | Path, node_id: int) -> None:
    """Note the node id the SuperLink gave this hospital (the ClientApp learns it from every message), so that
    later admission checks can tell "revoked" from "connected elsewhere" without side effects."""
    path = Path(state_dir) / NODE_FILE
    try:
        if path.is_file() and json.loads(path.read_text()).get("node_id") == int(node_id):
            return
        from xr0_core.atomic import atomic_write_json

        atomic_write_json(path, {"node_id": int(node_id)})
    except (OSError, ValueError):  # a note for later checks; never a reason to fail a round
        log.warning("could not write %s", path)


def known_node_id(state_dir: str | Path) -> int | None:
    try:
        return int(json.loads((Path(state_dir) / NODE_FILE).read_text())["node_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _client(link: NodeLink):
    """A Fleet API client that signs every call with the node key (Flower's own interceptor)."""
    from cryptography.hazmat.primitives import serialization
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    private = serialization.load_ssh_private_key(Path(link.key).read_bytes(), password=None)
    client = FleetHttpClient(f"https://{link.superlink}", verify=str(link.root_certificates), timeout=PROBE_TIMEOUT,
                             interceptors=[NodeAuthHttpInterceptor(private, private.public_key())])
    return client, private.public_key()


def _status(exc: Exception) -> tuple[int | None, int | None]:
    """(HTTP status, Flower error code) of a failed call; (None, None) for a transport error."""
    import httpx

    if not isinstance(exc, httpx.HTTPStatusError):
        return None, None
    try:
        code = json.loads(exc.response.text).get("code")
    except ValueError:
        code = None
    return exc.response.status_code, code if isinstance(code, int) else None


def admission(link: NodeLink, node_id: int | None = None) -> tuple[Admission, str]:
    """Whether the SuperLink admits this node key now, and a one-line detail.

    ``admitted``: the key is registered and no SuperNode is connected with it (checked the way a starting
    SuperNode activates, then deactivated at once, as a SuperNode stopping does). ``online``: registered and
    connected right now (only told apart when ``node_id`` is known). ``not-admitted``: never registered, or
    revoked (``flwr supernode unregister``; Flower 1.42 never accepts a revoked key again).
    ``unreachable``: the SuperLink did not answer.
    """
    import httpx
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, DeactivateNodeRequest
    from flwr.proto.node_pb2 import Node
    from flwr.proto.run_pb2 import GetRunRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    try:
        client, public = _client(link)
    except (OSError, ValueError, TypeError) as exc:
        return "unreachable", f"cannot use the node key {link.key}: {exc}"
    try:
        try:
            got = client.ActivateNode(ActivateNodeRequest(public_key=public_key_to_bytes(public),
                                                          heartbeat_interval=30.0))
            client.DeactivateNode(DeactivateNodeRequest(node_id=got.node_id))
            return "admitted", f"the SuperLink admits this key as node {got.node_id}"
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in (401, 412):
                return "unreachable", f"the SuperLink answered {exc.response.status_code} ({exc.response.text[:120]})"
        # Not activated: unknown key, or a SuperNode with it is online. A signed GetRun with the node id tells
        # which without touching anything (an unknown key fails authentication: 401).
        if node_id is not None:
            try:
                client.GetRun(GetRunRequest(node=Node(node_id=int(node_id)), run_id=0))
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 401:
                    return "online", f"node {node_id} is admitted and a SuperNode with this key is connected now"
        return "not-admitted", ("the SuperLink does not accept this node key: it was revoked by the coordinator "
                                "(flwr supernode unregister) or never registered")
    except httpx.TransportError as exc:
        return "unreachable", f"the SuperLink {link.superlink} did not answer ({type(exc).__name__}: {exc})"
    finally:
        client.close()


def run_status(link: NodeLink, node_id: int, run_id: int) -> RunStatus:
    """What the SuperLink says of run ``run_id`` to this node: ``running``, ``stopped`` (finished, stopped or
    not started: Flower refuses the node any call for it), ``revoked`` (the node key is no longer admitted), or
    ``unknown`` (no answer, or an answer that says neither: the caller goes on as if running)."""
    import httpx
    from flwr.proto.node_pb2 import Node
    from flwr.proto.run_pb2 import GetRunRequest

    try:
        client, _ = _client(link)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("cannot ask the SuperLink about run %s (node key %s: %s)", run_id, link.key, exc)
        return "unknown"
    try:
        client.GetRun(GetRunRequest(node=Node(node_id=int(node_id)), run_id=int(run_id)))
        return "running"
    except (httpx.HTTPError, OSError) as exc:
        status, code = _status(exc)
        if status == 401:
            return "revoked"
        if code == _RUN_STATUS_NOT_ALLOWED:
            return "stopped"
        log.warning("run %s: the SuperLink's answer about the run's status says neither (%s)", run_id, exc)
        return "unknown"
    finally:
        client.close()
