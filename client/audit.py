"""Site-side audit log: one JSON line per message that leaves the hospital (what, how big, to whom).

Hospital IT can read ``<state-dir>/audit.jsonl`` to see exactly what crossed its walls: for every reply, the
message type, round, every record in it with its kind, and for arrays their names, dtypes, shapes, byte
counts and SHA-256, for metrics their names and values. It is a Flower mod on the whole ClientApp, so it
sees the final outgoing message after every other mod.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from xr0_core.config import XR0Config, from_flat

from .site import one_message, resolve_site

AUDIT_FILE = "audit.jsonl"


def describe_content(msg: Message) -> dict[str, Any]:
    """Every record of ``msg.content`` with what it holds (arrays: metadata + hash, never values)."""
    records: dict[str, Any] = {}
    content = msg.content
    for name, rec in content.array_records.items():
        records[name] = {
            "kind": "arrays",
            "arrays": {
                k: {"dtype": a.dtype, "shape": list(a.shape), "bytes": len(a.data),
                    "sha256": hashlib.sha256(a.data).hexdigest()}
                for k, a in rec.items()
            },
        }
    for name, rec in content.metric_records.items():
        records[name] = {"kind": "metrics", "values": {k: v for k, v in rec.items()}}
    for name, rec in content.config_records.items():
        records[name] = {"kind": "config", "values": {k: (v if isinstance(v, (int, float, bool)) else repr(v)[:80])
                                                       for k, v in rec.items()}}
    return records


def _run_config(context: Context) -> XR0Config:
    """The run config, or the defaults when it does not parse (a refused bundle's run may carry keys this
    installation does not know; a deployed site is found from the node config alone)."""
    try:
        return from_flat(dict(context.run_config))
    except Exception:  # noqa: BLE001 - see above
        return XR0Config()


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler, then append a description of its reply to the site's audit log."""
    with one_message():  # the handler's site is the one audited: resolved once (client/site.py)
        reply = call_next(msg, context)
        try:
            site = resolve_site(context.node_config, _run_config(context))
        except Exception:  # noqa: BLE001 - auditing must never turn a good reply into a failure
            return reply
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "message_type": msg.metadata.message_type,
        "run_id": msg.metadata.run_id,
        "error": reply.error.reason[:200] if reply.has_error() else None,
        "records": {} if reply.has_error() else describe_content(reply),
    }
    path = Path(site.state_dir) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
    return reply
