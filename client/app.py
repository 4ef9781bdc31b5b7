"""Flower ClientApp (hospital): records in, one ``xr0_core`` call, records out (STYLE 7).

Every reply is described in the site's audit log (``client/audit.py``); an exception becomes an error reply
without local paths or tracebacks (``client/errors.py``).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from xr0_core import record_keys as keys
from xr0_core.config import from_flat

from . import records, secagg
from .audit import audit_mod
from .errors import sanitize_errors_mod
from .preflight import preflight
from .runtime import evaluate_site, train_site
from .site import resolve_site


def _checked_config(msg: Message, context: Context, cfg=None, site=None):
    """Run config, hospital, weights and instruction of a train/evaluate message, after the two checks every
    round passes before touching data: the app bundle is one the site policy approves, as checked by the
    hospital's own launcher before this code ran (``client/launcher.py``; ``xr0_core/deploy/appversion.py`` says
    what a version is; no launcher and an allow-list is a refusal), and the coordinator's config hash is this
    site's. ``cfg`` / ``site``: already parsed / resolved for this message (each is done once per message:
    resolving a simulated hospital lists the data root and reads its identity file)."""
    from xr0_core.site.refusals import check_bundle

    from .approval import verified_version

    if cfg is None:
        cfg = from_flat(dict(context.run_config))
    if site is None:
        site = resolve_site(context.node_config, cfg)
    check_bundle(site.policy(), verified_version())
    weights, instruction = records.parse_instruction(msg.content)
    local_hash = cfg.hash()
    if instruction.config_hash != local_hash:
        raise records.RecordError(
            f"the coordinator's config hash {instruction.config_hash} differs from this site's "
            f"{local_hash}: the site runs another app version or run config"
        )
    _note_node(context, site)  # only once both checks passed, as before
    return cfg, site, weights, instruction


CHECK_EVERY = 10.0  # seconds between two questions to the SuperLink while training ("is the run still running?")


def run_watch(context: Context, site) -> Callable[[bool], bool] | None:
    """``run_active(fresh)`` for this message's run: asks the SuperLink with the node key
    (:func:`client.node_link.run_status`) when ``xr0 site supernode`` left the connection in the state folder;
    at most every :data:`CHECK_EVERY` seconds unless ``fresh``. None in simulation or without that file
    (then the round cannot learn of a stop, as before). An unanswered question counts as running."""
    if site.partition_id is not None:
        return None
    from .node_link import NodeLink, run_status

    link = NodeLink.read(site.state_dir)
    if link is None:
        return None
    last = {"at": -math.inf, "active": True}

    def run_active(fresh: bool) -> bool:
        now = time.monotonic()
        if fresh or now - last["at"] >= CHECK_EVERY:
            last["active"] = run_status(link, int(context.node_id), int(context.run_id)) in ("running", "unknown")
            last["at"] = now
        return bool(last["active"])
    return run_active


def _note_node(context: Context, site) -> None:
    """In deployment, the hospital's node id is noted for later admission checks."""
    if site.partition_id is None:
        from .node_link import remember_node_id

        remember_node_id(site.state_dir, int(context.node_id))


def train_round(msg: Message, context: Context, cfg=None, site=None) -> Message:
    """Local training, whether the weights then leave plainly or masked (secure aggregation's stage)."""
    cfg, site, weights, instruction = _checked_config(msg, context, cfg, site)
    shared, metrics = train_site(cfg, site, weights, instruction, run_active=run_watch(context, site))
    return Message(records.train_reply_content(shared, metrics), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """A plain ``train`` message: the weights would reach the coordinator unmasked, so a site whose policy
    requires secure aggregation, or whose run config asked for it, refuses it before reading anything
    (:func:`xr0_core.site.refusals.check_plain_round`)."""
    from xr0_core.site.refusals import check_plain_round

    cfg = from_flat(dict(context.run_config))
    site = resolve_site(context.node_config, cfg)
    check_plain_round(site.policy(), cfg)
    return train_round(msg, context, cfg, site)


def evaluate(msg: Message, context: Context) -> Message:
    cfg, site, weights, instruction = _checked_config(msg, context)
    metrics = evaluate_site(cfg, site, weights, instruction)
    return Message(records.metrics_reply_content(metrics), reply_to=msg)


def build_app(extra_mods: Sequence[Mod] = ()) -> ClientApp:
    """The hospital ClientApp.

    Mods, outermost first: the audit log (sees the final reply), error sanitising (no local paths or
    tracebacks leave), then ``extra_mods`` (tests inject faults here).
    """
    client_app = ClientApp(mods=[audit_mod, sanitize_errors_mod, *extra_mods])
    client_app.train()(train)
    client_app.evaluate()(evaluate)
    client_app.query(keys.PREFLIGHT)(preflight)  # before a round: will this hospital take part? (client/preflight.py)
    # Secure-aggregation stages (query.secagg_*, train.secagg); idle unless the server runs secagg rounds.
    secagg.register(client_app, train_round)
    return client_app


app = build_app()
