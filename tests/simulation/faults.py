"""Fault injection for simulated hospitals, as Flower mods (Ray pickles these by value; see conftest)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from xr0_core import record_keys as keys


def _is_train(msg: Message) -> bool:
    return msg.metadata.message_type.startswith("train")


def crash_on(partition: int):
    """Mod: the hospital with this partition id raises while training."""

    def mod(msg: Message, context: Context, call_next):
        if _is_train(msg) and int(context.node_config.get("partition-id", -1)) == partition:
            raise RuntimeError(f"injected failure at /data/hospital-{partition}/secret_patient.dcm")
        return call_next(msg, context)

    return mod


def nan_on(partition: int):
    """Mod: the hospital with this partition id returns NaN weights."""

    def mod(msg: Message, context: Context, call_next):
        reply = call_next(msg, context)
        if not _is_train(msg) or int(context.node_config.get("partition-id", -1)) != partition or reply.has_error():
            return reply
        arrays = reply.content.array_records[keys.ARRAYS]
        poisoned = {}
        for name, arr in arrays.items():
            values = arr.numpy().copy()
            values.flat[0] = np.nan
            poisoned[name] = Array(values)
        content = RecordDict({keys.ARRAYS: ArrayRecord(poisoned), keys.METRICS: reply.content.metric_records[keys.METRICS]})
        return Message(content, reply_to=msg)

    return mod
