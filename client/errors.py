"""Turn a hospital-side exception into an error reply that carries no local detail.

Without this, Flower sends the exception's full text and traceback to the coordinator, and those name
local file paths (which at hospitals often hold patient names or accession numbers). The coordinator gets
the exception type and its message with every path-like token redacted; the full traceback goes to the
site's own log (``<state-dir>/site.log``).
"""

from __future__ import annotations

import logging
import re
import traceback
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable

from xr0_core.config import from_flat

from .site import resolve_site

SITE_ERROR_CODE = 4100  # "the hospital could not do what was asked"; the reason says why
_PATHLIKE = re.compile(r"(?:[A-Za-z]:)?[\w.~-]*[/\\][^\s'\",;:)]*")

log = logging.getLogger(__name__)


def redact(text: str, limit: int = 400) -> str:
    """Replace path-like tokens with ``<path>``; one line, at most ``limit`` characters."""
    one_line = " ".join(text.split())
    return _PATHLIKE.sub("<path>", one_line)[:limit]


def _site_log(context: Context) -> Path | None:
    try:
        return resolve_site(context.node_config, from_flat(dict(context.run_config))).state_dir / "site.log"
    except Exception:  # noqa: BLE001 - a bad node config is itself the error being reported
        return None


def sanitize_errors_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    try:
        return call_next(msg, context)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reply; the round goes on elsewhere
        detail = traceback.format_exc()
        path = _site_log(context)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"--- {msg.metadata.message_type} failed\n{detail}\n")
        log.error("%s failed: %s", msg.metadata.message_type, detail)
        reason = redact(f"{type(exc).__name__}: {exc}") + " (details in the site's log)"
        if "partition-id" in context.node_config:
            # Simulation only: an error reply carries no metrics, so tell the coordinator which hospital it is.
            reason += f" [simulated partition {int(context.node_config['partition-id'])}]"
        return Message(Error(code=SITE_ERROR_CODE, reason=reason), reply_to=msg)
