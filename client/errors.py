"""Turn a hospital-side exception into an error reply that carries no local detail.

Without this, Flower sends the exception's full text and traceback to the coordinator, and those name
local file paths (which at hospitals often hold patient names or accession numbers). The coordinator gets
the exception type and its message with every path-like token redacted; the full traceback goes to the
site's own log (``<state-dir>/site.log``).

Under differential privacy the text itself could carry what the accountant does not cover (an error raised
at DP step k, a count, a loss value), so only fixed categories leave (:func:`reply_reason`): a refusal's
own text (built from the site policy and the run config, never from data), secure-aggregation protocol
errors (about the coordinator's messages), and otherwise one fixed sentence per kind of failure.
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


def _private(context: Context) -> bool:
    """Whether this site works under DP in this run (run config or policy); True when that cannot be told."""
    try:
        cfg = from_flat(dict(context.run_config))
        if cfg.privacy.enabled or cfg.privacy.client_level:
            return True
        return resolve_site(context.node_config, cfg).policy().privacy.dp_required
    except Exception:  # noqa: BLE001 - cannot tell: the fixed categories say less
        return True


PRIVATE_FAILURE = "{kind} failed at the site (under differential privacy only this category leaves; details in " \
                  "the site's log)"
PRIVATE_LEDGER = "privacy ledger: this hospital refuses the release (privacy budget, run cap or noise cap); " \
                 "details in the site's log"


def reply_reason(exc: BaseException, message_type: str, private: bool) -> str:
    """The reason an error reply carries: without DP the redacted exception text; under DP a fixed category
    unless the exception is a refusal (policy / config / protocol text that reads no private data)."""
    from xr0_core.privacy.ledger import PrivacyError
    from xr0_core.secagg.protocol import SecAggError
    from xr0_core.site.policy import PolicyError, PolicyRefusal
    from xr0_core.site.round import RunStopped

    from .records import RecordError
    from .site import SiteConfigError

    text = redact(f"{type(exc).__name__}: {exc}")
    if not private:
        return text
    if isinstance(exc, (PolicyRefusal, PolicyError, SiteConfigError, RecordError, SecAggError, RunStopped)):
        return text
    if isinstance(exc, PrivacyError):
        return PRIVATE_LEDGER
    kind = "evaluation" if message_type.startswith("evaluate") else "training" if message_type.startswith(
        "train") else "the request"
    return PRIVATE_FAILURE.format(kind=kind)


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
        reason = reply_reason(exc, msg.metadata.message_type, _private(context))
        if "site's log" not in reason:
            reason += " (details in the site's log)"
        if "partition-id" in context.node_config:
            # Simulation only: an error reply carries no metrics, so tell the coordinator which hospital it is.
            reason += f" [simulated partition {int(context.node_config['partition-id'])}]"
        return Message(Error(code=SITE_ERROR_CODE, reason=reason), reply_to=msg)
