"""One pass over the SuperLink's waiting messages per dispatch tick, instead of one pass per hospital.

Flower's Simulation Engine (``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``, flwr 1.42) hands
messages to its Ray workers by asking the in-memory LinkState, every 0.1 s, for *each* simulated node, for one
undelivered message; each such question scans every stored message and re-validates it
(``_check_stored_messages``: expiry, federation membership). With N hospitals and M messages of a round waiting
that is N x M validations per tick: at 100 hospitals (M = 100) about half of one core of a 2-core machine spent
polling, beside the hospitals' training, and at 1,000 hospitals more than a core (issue 27's profile,
``bench/federation.py``). :func:`add_messages_to_queue` below keeps Flower's semantics (at most one message per
node per tick, each validated and marked delivered the way ``get_message_ins`` does) with one scan of the M
waiting messages per tick. :func:`install` swaps it in for the duration of a run (``simulation/engine.py``);
any other LinkState (not the in-memory one) keeps Flower's own loop.
"""

from __future__ import annotations

import contextlib
import threading
from queue import Queue
from typing import Any, Iterator, Mapping

TICK = 0.1  # seconds between two looks at the LinkState, as Flower's loop


def undelivered_one_per_node(state: Any, nodes: Mapping[int, Any]) -> list[Any]:
    """The next undelivered message of every node in ``nodes`` (at most one each), marked delivered.

    Parameters
    ----------
    state : flwr InMemoryLinkState
        Holds ``message_ins_store`` (message id -> Message) and ``lock``.
    nodes : mapping node id -> partition id
        The simulated nodes (Flower's ``NodeToPartitionMapping``).

    Returns
    -------
    list of flwr Message
        In store (push) order, as ``get_message_ins`` would find them node by node.
    """
    from flwr.supercore.date import now

    taken: set[int] = set()
    out = []
    with state.lock:
        for msg_id in list(state.message_ins_store.keys()):
            msg = state.message_ins_store.get(msg_id)
            if msg is None:
                continue
            node = msg.metadata.dst_node_id
            if node in taken or node not in nodes or msg.metadata.delivered_at != "":
                continue
            state._check_stored_messages({msg_id})  # expired / left the federation: deleted, as Flower does
            msg = state.message_ins_store.get(msg_id)
            if msg is None:
                continue
            taken.add(node)
            out.append(msg)
        delivered_at = now().isoformat()
        for msg in out:
            msg.metadata.delivered_at = delivered_at
    return out


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: Mapping[int, Any],
                          f_stop: threading.Event) -> None:
    """Drop-in for Flower's loop of the same name (same arguments): waiting messages into the workers' queue."""
    if not (hasattr(state, "message_ins_store") and hasattr(state, "_check_stored_messages")):
        return _flower_loop(state, queue, nodes_mapping, f_stop)  # another LinkState: Flower's own loop
    while not f_stop.is_set():
        for msg in undelivered_one_per_node(state, nodes_mapping):
            queue.put(msg)
        f_stop.wait(TICK)
    return None


_FLOWER_LOOP = None  # Flower's own function while ours is installed


def _flower_loop(*args: Any) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    loop = _FLOWER_LOOP or vce_api.add_messages_to_queue
    if loop is add_messages_to_queue:
        raise RuntimeError("simulation.fastvce: Flower's own dispatch loop is not known")
    return loop(*args)


@contextlib.contextmanager
def install() -> Iterator[None]:
    """Use :func:`add_messages_to_queue` in Flower's Simulation Engine inside the ``with`` block."""
    global _FLOWER_LOOP
    from flwr.server.superlink.fleet.vce import vce_api

    if vce_api.add_messages_to_queue is add_messages_to_queue:  # nested: already ours
        yield
        return
    _FLOWER_LOOP = vce_api.add_messages_to_queue
    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = _FLOWER_LOOP
        _FLOWER_LOOP = None
