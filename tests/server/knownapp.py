"""In-process hospitals whose 'training' adds a small known update to the real model's weights (for coordinator
tests where the preflight, naming or bookkeeping is under test, not SSL training)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import preflight as client_preflight
from client import secagg as client_secagg
from xr0_core import record_keys as keys


def _step(node: int, name: str, shape) -> np.ndarray:
    seed = (node * 7919 + sum(map(ord, name))) % (2**32)
    return np.random.default_rng(seed).normal(0, 1e-3, shape).astype(np.float32)


def known_train(msg: Message, context: Context) -> Message:
    node = int(msg.metadata.dst_node_id)
    arrays = msg.content.array_records[keys.ARRAYS]
    new = {k: arrays[k].numpy() + _step(node, k, arrays[k].numpy().shape) for k in arrays}
    return Message(RecordDict({keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in new.items()}),
                               keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 10})}), reply_to=msg)


def known_evaluate(msg: Message, context: Context) -> Message:
    return Message(RecordDict({keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 4, "knn-anatomy": 0.5,
                                                          "knn-anatomy-random": 0.25})}), reply_to=msg)


def build(preflight=client_preflight.ready, trust=None) -> ClientApp:
    """``preflight``: the query handler (default: always ready; :func:`client.preflight.preflight` for the real
    hospital-side checks); ``trust``: secure aggregation's (default: in memory, every key pinned)."""
    app = ClientApp()
    app.train()(known_train)
    app.evaluate()(known_evaluate)
    app.query(keys.PREFLIGHT)(preflight)
    client_secagg.register(app, known_train, trust or client_secagg.in_memory_trust())
    return app
