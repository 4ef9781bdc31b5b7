"""Flower ClientApp (hospital): records in, one ``xr0_core`` call, records out (STYLE 7).

Every reply is described in the site's audit log (``client/audit.py``); an exception becomes an error reply
without local paths or tracebacks (``client/errors.py``).
"""

from __future__ import annotations

from typing import Sequence

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


def _checked_config(msg: Message, context: Context):
    """Run config, weights and instruction of a train/evaluate message, after the two checks every round
    passes before touching data: the app version is one the site policy approves
    (``xr0_core/deploy/appversion.py`` says what a version is), and the coordinator's config hash is this
    site's."""
    from xr0_core.deploy.appversion import app_version
    from xr0_core.site.refusals import check_bundle

    cfg = from_flat(dict(context.run_config))
    check_bundle(resolve_site(context.node_config, cfg).policy(), app_version())
    weights, instruction = records.parse_instruction(msg.content)
    if instruction.config_hash != cfg.hash():
        raise records.RecordError(
            f"the coordinator's config hash {instruction.config_hash} differs from this site's "
            f"{cfg.hash()}: the site runs another app version or run config"
        )
    return cfg, weights, instruction


def train_round(msg: Message, context: Context) -> Message:
    """Local training, whether the weights then leave plainly or masked (secure aggregation's stage)."""
    cfg, weights, instruction = _checked_config(msg, context)
    site = resolve_site(context.node_config, cfg)
    shared, metrics = train_site(cfg, site, weights, instruction)
    return Message(records.train_reply_content(shared, metrics), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """A plain ``train`` message: the weights would reach the coordinator unmasked, so a site whose policy
    requires secure aggregation, or whose run config asked for it, refuses it before reading anything
    (:func:`xr0_core.site.refusals.check_plain_round`)."""
    from xr0_core.site.refusals import check_plain_round

    cfg = from_flat(dict(context.run_config))
    check_plain_round(resolve_site(context.node_config, cfg).policy(), cfg)
    return train_round(msg, context)


def evaluate(msg: Message, context: Context) -> Message:
    cfg, weights, instruction = _checked_config(msg, context)
    site = resolve_site(context.node_config, cfg)
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
