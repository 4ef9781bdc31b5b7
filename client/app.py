"""Flower ClientApp (hospital): records in, one ``xr0_core`` call, records out (STYLE 7).

What leaves the hospital is built only by :func:`client.records.train_reply_content` /
:func:`client.records.metrics_reply_content`: float32 shared weights and scalar metrics.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from xr0_core.config import from_flat

from . import records
from .runtime import evaluate_site, train_site
from .site import resolve_site

app = ClientApp()


def _checked_config(msg: Message, context: Context):
    cfg = from_flat(dict(context.run_config))
    weights, instruction = records.parse_instruction(msg.content)
    if instruction.config_hash != cfg.hash():
        raise records.RecordError(
            f"the coordinator's config hash {instruction.config_hash} differs from this site's "
            f"{cfg.hash()}: the site runs another app version or run config"
        )
    return cfg, weights, instruction


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, weights, instruction = _checked_config(msg, context)
    site = resolve_site(context.node_config, cfg)
    shared, metrics = train_site(cfg, site, weights, instruction)
    return Message(records.train_reply_content(shared, metrics), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, weights, instruction = _checked_config(msg, context)
    site = resolve_site(context.node_config, cfg)
    metrics = evaluate_site(cfg, site, weights, instruction)
    return Message(records.metrics_reply_content(metrics), reply_to=msg)
