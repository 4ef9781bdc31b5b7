"""The one-scan dispatch of simulated messages hands out what Flower's per-node loop hands out (at most one
undelivered message per simulated node per tick, in push order, expired ones deleted), checked against
Flower's own ``InMemoryLinkState.get_message_ins`` on the same messages."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from simulation.fastvce import undelivered_one_per_node


class FakeState:
    """The two parts of an InMemoryLinkState the dispatch uses; ``expired`` ids are deleted when checked."""

    def __init__(self, messages, expired=()):
        self.lock = threading.RLock()
        self.message_ins_store = {m.metadata.message_id: m for m in messages}
        self.expired = set(expired)
        self.checked: list[str] = []

    def _check_stored_messages(self, ids):
        for i in ids:
            self.checked.append(i)
            if i in self.expired:
                del self.message_ins_store[i]

    def flower_get_message_ins(self, node_id):
        """Flower's ``get_message_ins(node_id, limit=1)`` over this store (same loop, same checks)."""
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

        return InMemoryLinkState.get_message_ins(self, node_id=node_id, limit=1)


def _msg(i, node, delivered=""):
    return SimpleNamespace(metadata=SimpleNamespace(message_id=f"m{i}", dst_node_id=node, delivered_at=delivered,
                                                    run_id=1))


def _plan():
    return [_msg(0, 7), _msg(1, 7), _msg(2, 9, delivered="earlier"), _msg(3, 9), _msg(4, 11), _msg(5, 12),
            _msg(6, 13)]


def test_one_undelivered_message_per_simulated_node_in_push_order():
    nodes = {7: 0, 9: 1, 11: 2, 13: 3}  # node 12 is not one of ours
    ours = FakeState(_plan(), expired={"m4"})
    got = undelivered_one_per_node(ours, nodes)
    assert [m.metadata.message_id for m in got] == ["m0", "m3", "m6"]
    assert all(m.metadata.delivered_at not in ("", "earlier") for m in got)
    assert "m4" not in ours.message_ins_store  # expired: deleted, not handed out

    flower = FakeState(_plan(), expired={"m4"})
    theirs = [m for node in nodes for m in flower.flower_get_message_ins(node)]
    assert sorted(m.metadata.message_id for m in theirs) == ["m0", "m3", "m6"]

    # The next tick hands out the second message of node 7, and nothing twice.
    assert [m.metadata.message_id for m in undelivered_one_per_node(ours, nodes)] == ["m1"]
    assert undelivered_one_per_node(ours, nodes) == []


def test_each_tick_checks_each_waiting_message_once():
    """Flower's loop validates every stored message once per node (N x M per tick); ours once per waiting one."""
    nodes = {n: n for n in range(50)}
    ours = FakeState([_msg(i, i % 50, delivered="earlier" if i < 40 else "") for i in range(100)])
    undelivered_one_per_node(ours, nodes)
    assert len(ours.checked) == 50  # the 60 undelivered, one per node: 10 of them wait for the next tick

    flower = FakeState([_msg(i, i % 50, delivered="earlier" if i < 40 else "") for i in range(100)])
    for node in nodes:
        flower.flower_get_message_ins(node)
    assert len(flower.checked) > 20 * len(ours.checked)
