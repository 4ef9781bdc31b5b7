"""A hospital that crashes in the middle of a round (after the key stages, while training), as a Flower mod.
Ray pickles it by value (see test_simulation.py)."""

from __future__ import annotations

from flwr.app import Context, Message


def crash_in_training(partition: int):
    def mod(msg: Message, context: Context, call_next):
        if msg.metadata.message_type.startswith("train") and int(context.node_config.get("partition-id", -1)) == partition:
            raise RuntimeError("injected dropout while training")
        return call_next(msg, context)

    return mod
