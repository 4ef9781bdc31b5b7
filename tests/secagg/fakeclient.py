"""A ClientApp whose 'training' adds a known per-node update: exact checks without SSL training."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import secagg as client_secagg
from xr0_core import record_keys as keys

SHAPES = {"a.weight": (6, 5), "b.bias": (7,), "c": (3, 2, 2)}


def known_update(node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in SHAPES.items()}


def known_weight(node: int) -> int:
    return 10 + node % 37


def fake_train(msg: Message, context: Context) -> Message:
    node = int(msg.metadata.dst_node_id)
    arrays = msg.content.array_records[keys.ARRAYS]
    upd = known_update(node)
    new = {k: (arrays[k].numpy() + upd[k]).astype(np.float32) for k in sorted(arrays)}
    metrics = MetricRecord({keys.NUM_EXAMPLES: known_weight(node), "loss": float(node % 5)})
    return Message(RecordDict({keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in new.items()}),
                              keys.METRICS: metrics}), reply_to=msg)


def fake_evaluate(msg: Message, context: Context) -> Message:
    return Message(RecordDict({keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1, "acc": 0.5})}), reply_to=msg)


def build(mods=(), trust=None) -> ClientApp:
    """``trust``: a :func:`client.secagg.in_memory_trust` (default: a fresh one, keys per node, all pinned)."""
    app = ClientApp(mods=list(mods))
    app.train()(fake_train)
    app.evaluate()(fake_evaluate)
    client_secagg.register(app, fake_train, trust or client_secagg.in_memory_trust())
    return app
