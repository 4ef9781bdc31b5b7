"""The coordinator's table of hospitals: who is admitted, under which name and key (Flower's Control API).

The SuperLink's own node registry is the table: ``flwr supernode register --name`` stores a name beside each
node key, and the ServerApp reads both back for its report (``Grid.get_nodes``). What Flower 1.42's CLI does not
do, and these functions do:

- **Names**: ``flwr supernode list`` shows neither names nor keys. :func:`list_sites` gives name, node id, status,
  the key's fingerprint (as ``ssh-keygen -lf`` prints it, so a hospital can confirm its key on the phone) and
  when it was last seen.
- **Admit once, idempotently**: re-registering a key the SuperLink already holds fails ("Public key already in
  use"), so a loop over every ``.pub`` broke as soon as one was registered. :func:`admit` says "already
  admitted" for the same key and name and registers only new ones.
- **Revoke by name** (:func:`revoke`), and a clear word on re-admission: the SuperLink keeps an unregistered
  key for ever and refuses it again, so a revoked hospital comes back with a new key (``xr0 certs site
  --replace``) under the same name; :func:`admit` says so instead of Flower's "Public key already in use".
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNREGISTERED = "unregistered"


class SitesError(RuntimeError):
    """A refused admission, revocation or listing; the message says what to do."""


@dataclass(frozen=True)
class Site:
    """One node of the SuperLink's registry (revoked ones included)."""

    node_id: int
    name: str
    status: str  # registered | online | offline | unregistered
    fingerprint: str  # SHA256:... of the OpenSSH public key (ssh-keygen -lf)
    registered_at: str
    last_seen: str  # last activation (connection), or "" if never
    revoked_at: str
    public_key: bytes  # as the SuperLink stores it (PEM SubjectPublicKeyInfo)

    @property
    def active(self) -> bool:
        return self.status != UNREGISTERED

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "node_id": self.node_id, "status": self.status, "fingerprint": self.fingerprint,
                "registered_at": self.registered_at, "last_seen": self.last_seen, "revoked_at": self.revoked_at}


def fingerprint(public_key: bytes) -> str:
    """``SHA256:<base64>`` of the key's OpenSSH wire form, what ``ssh-keygen -lf KEY.pub`` prints.

    ``public_key``: PEM (as the SuperLink stores it) or an OpenSSH ``.pub`` line."""
    from cryptography.hazmat.primitives import serialization

    data = bytes(public_key)
    key = (serialization.load_pem_public_key(data) if data.lstrip().startswith(b"-----")
           else serialization.load_ssh_public_key(data))
    blob = base64.b64decode(key.public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_bytes(pub_file: Path) -> bytes:
    """The bytes the SuperLink stores for an OpenSSH public key file (what ``flwr supernode register`` sends)."""
    from flwr.cli.supernode.register import try_load_public_key

    if not Path(pub_file).is_file():
        raise SitesError(f"{pub_file} does not exist (the hospital's `xr0 certs site` writes NAME.pub)")
    try:
        return try_load_public_key(Path(pub_file).expanduser())
    except SystemExit:  # flwr's loader exits on a key it cannot use
        raise SitesError(f"{pub_file} is not an OpenSSH NIST EC public key (make one with xr0 certs site)") from None


def key_name(pub_file: Path) -> str:
    """The site name an ``xr0 certs site --name NAME`` key carries in its comment (``xr0-site-NAME``), or ""."""
    parts = Path(pub_file).read_text().split()
    comment = parts[2] if len(parts) > 2 else ""
    return comment[len("xr0-site-"):] if comment.startswith("xr0-site-") else ""


def _control(connection: str):
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection

    try:
        with contextlib.redirect_stdout(sys.stderr):  # Flower prints "Using SuperLink: ..." on stdout
            return init_http_client_from_connection(read_superlink_connection(connection))
    except SystemExit as exc:  # flwr's CLI helpers exit on a bad connection name
        raise SitesError(f"no usable SuperLink connection {connection!r} in $FLWR_HOME/config.toml (xr0 coordinator "
                         "connect --name ...)") from exc


def _why(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        try:
            body = json.loads(exc.response.text)
            return f"{body.get('detail') or body} (HTTP {exc.response.status_code})"
        except ValueError:
            return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"


def list_sites(connection: str) -> list[Site]:
    """Every node the SuperLink knows (revoked ones too), oldest first."""
    from flwr.proto.control_pb2 import ListNodesRequest

    client = _control(connection)
    try:
        res = client.ListNodes(ListNodesRequest())
    except Exception as exc:  # noqa: BLE001 - any failure is said in one line
        raise SitesError(f"the SuperLink did not list its nodes: {_why(exc)}") from None
    finally:
        client.close()
    return [sites_entry(n) for n in sorted(res.nodes_info, key=lambda n: n.registered_at)]


def sites_entry(info) -> Site:
    """A :class:`Site` from Flower's ``NodeInfo`` (Control API or ``Grid.get_nodes``)."""
    try:
        fp = fingerprint(info.public_key) if info.public_key else ""
    except (ValueError, TypeError):
        fp = "?"
    name = info.name if info.HasField("name") else ""
    return Site(int(info.node_id), name, str(info.status), fp, _when(info.registered_at),
                _when(info.last_activated_at), _when(info.unregistered_at), bytes(info.public_key))


def _when(iso: str) -> str:
    """``2026-12-04T01:50:16.108330+00:00`` as ``2026-12-04 01:50:16Z`` ("" stays "")."""
    return f"{iso[:10]} {iso[11:19]}Z" if iso and len(iso) >= 19 else (iso or "")


def admit(connection: str, pub_file: Path, name: str = "") -> tuple[Site | None, int, str]:
    """Register ``pub_file`` under ``name`` (default: the name in the key's comment).

    Returns (the existing entry or None, node id, what happened). Admitting a key already admitted under the
    same name changes nothing ("already admitted").

    Raises
    ------
    SitesError
        No name; the name is another active key's; the key is admitted under another name; the key was revoked
        (the SuperLink never accepts it again: the message says how the hospital rejoins with a new key).
    """
    from flwr.proto.control_pb2 import RegisterNodeRequest

    from xr0_core.deploy.certs import CredentialError, check_site_name

    name = name or key_name(pub_file)
    if not name:
        raise SitesError(f"{pub_file} carries no xr0 site name: give --name NAME (the hospital's name in reports)")
    try:
        check_site_name(name)
    except CredentialError as exc:
        raise SitesError(str(exc)) from None
    key = key_bytes(pub_file)
    sites = list_sites(connection)
    same_key = [s for s in sites if s.public_key == key]
    for s in same_key:
        if s.active and s.name == name:
            return s, s.node_id, f"{name} is already admitted as node {s.node_id}"
        if s.active:
            raise SitesError(f"this key is already admitted as {s.name or 'an unnamed node'} (node {s.node_id}); "
                             f"revoke that first (xr0 coordinator revoke {connection} {s.name or s.node_id})")
        raise SitesError(
            f"this key was revoked on {s.revoked_at or '?'} (node {s.node_id}"
            f"{', ' + s.name if s.name else ''}), and the SuperLink (Flower 1.42) never accepts a revoked key "
            f"again. To re-admit {name}: the hospital makes a new node key (xr0 certs site --out DIR --name {name} "
            "--replace), sends the new .pub, and you admit that one; its new node id appears beside the same name")
    clash = [s for s in sites if s.active and s.name == name]
    if clash:
        raise SitesError(f"the name {name!r} is already node {clash[0].node_id}'s (key {clash[0].fingerprint}); "
                         f"revoke it first (xr0 coordinator revoke {connection} {name}) or choose another name")
    client = _control(connection)
    try:
        res = client.RegisterNode(RegisterNodeRequest(public_key=key, name=name))
    except Exception as exc:  # noqa: BLE001
        raise SitesError(f"the SuperLink refused to register {pub_file}: {_why(exc)}") from None
    finally:
        client.close()
    if not res.node_id:
        raise SitesError(f"the SuperLink did not register {pub_file}")
    return None, int(res.node_id), f"admitted {name} as node {res.node_id} (key {fingerprint(key)})"


def revoke(connection: str, who: str) -> Site:
    """Unregister the active node named ``who`` (or with node id ``who``); its SuperNode is refused from now on.

    Raises
    ------
    SitesError
        No such active node.
    """
    from flwr.proto.control_pb2 import UnregisterNodeRequest

    active = [s for s in list_sites(connection) if s.active]
    match = [s for s in active if s.name == who] or [s for s in active if who.isdigit() and s.node_id == int(who)]
    if not match:
        names = ", ".join(s.name or str(s.node_id) for s in active) or "none"
        raise SitesError(f"no admitted hospital named {who!r} (admitted: {names})")
    site = match[0]
    client = _control(connection)
    try:
        client.UnregisterNode(UnregisterNodeRequest(node_id=site.node_id))
    except Exception as exc:  # noqa: BLE001
        raise SitesError(f"the SuperLink refused to unregister node {site.node_id}: {_why(exc)}") from None
    finally:
        client.close()
    return site


def node_names(grid: Any) -> dict[int, str]:
    """``{node id: name}`` of the nodes a deployment Grid knows (``Grid.get_nodes``: the SuperLink's registry);
    empty for grids without it (simulation, tests) or when the call fails (names are for people, not for the
    run)."""
    get = getattr(grid, "get_nodes", None)
    if get is None:
        return {}
    try:
        return {int(n.node_id): n.name for n in get() if n.HasField("name") and n.name}
    except Exception:  # noqa: BLE001 - a report without names beats a stopped run
        return {}
