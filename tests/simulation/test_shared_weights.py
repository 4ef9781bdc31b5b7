"""simulation/shared_weights.py: a round's weights put once, the message the ClientApp sees unchanged."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from simulation import shared_weights as sw


@pytest.fixture(autouse=True)
def identity(monkeypatch):
    """Flower's process-wide task identity, needed to build messages outside a running app."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 0), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _round_messages(n: int, nbytes: int = 2 << 20) -> list[Message]:
    rng = np.random.default_rng(0)
    arrays = ArrayRecord({"w": Array(rng.standard_normal(nbytes // 4).astype(np.float32)),
                          "b": Array(np.arange(3, dtype=np.float32))})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "lr": 0.5})})
    return [Message(content=content, message_type="train", dst_node_id=i + 1) for i in range(n)]


class FakeStore:
    """ray.put / ray.get stand-in: a put pickles (as Ray would), a get unpickles."""

    class Ref:
        def __init__(self, i: int) -> None:
            self.i = i

        def hex(self) -> str:
            return f"ref{self.i}"

    def __init__(self) -> None:
        self.blobs: dict[int, bytes] = {}

    def put(self, obj):
        ref = self.Ref(len(self.blobs))
        self.blobs[ref.i] = pickle.dumps(obj)
        return ref

    def get(self, ref):
        return pickle.loads(self.blobs[ref.i])


def test_a_rounds_weights_are_put_once_and_every_message_comes_back_equal():
    store = FakeStore()
    shared = sw.SharedRecords(put=store.put)
    messages = _round_messages(5)
    first, refs, _ = shared.split(messages[0])
    assert first is messages[0] and refs == {}  # seen once: sent as Flower sends it
    for msg in messages[1:]:
        light, refs, order = shared.split(msg)
        assert set(refs) == {"arrays"} and "arrays" not in light.content  # the weights travel by reference
        assert "arrays" in msg.content  # the LinkState's message is untouched
        sent = pickle.loads(pickle.dumps(light))  # what the actor receives
        got = sw.restore(sent, refs, order, fetch=store.get)
        assert list(got.content.keys()) == list(msg.content.keys())
        assert got.metadata.dst_node_id == msg.metadata.dst_node_id
        assert got.metadata.message_type == "train"
        for k, a in msg.content["arrays"].items():
            assert got.content["arrays"][k].data == a.data
        assert dict(got.content["config"]) == dict(msg.content["config"])
    assert shared.puts == 1  # one put for the four messages after the first


def test_a_changed_record_is_put_again_and_small_records_stay_in_the_message():
    store = FakeStore()
    shared = sw.SharedRecords(put=store.put)
    msg = _round_messages(1)[0]
    shared.split(msg)
    shared.split(msg)
    assert shared.puts == 1
    rec = msg.content["arrays"]
    rec["w"] = Array(np.zeros(1 << 19, dtype=np.float32))  # same record object, new contents
    assert shared.split(msg)[1] == {}  # not the record that was put: inline again, then put again
    light, refs, order = shared.split(msg)
    assert shared.puts == 2
    got = sw.restore(pickle.loads(pickle.dumps(light)), refs, order, fetch=store.get)
    assert got.content["arrays"]["w"].data == rec["w"].data
    small = _round_messages(1, nbytes=1024)[0]
    light, refs, _ = shared.split(small)
    assert refs == {} and light is small and shared.puts == 2


def test_records_sent_once_never_push_the_shared_one_out():
    store = FakeStore()
    shared = sw.SharedRecords(put=store.put)
    msgs = _round_messages(3)
    shared.split(msgs[0])
    shared.split(msgs[1])
    assert shared.puts == 1
    for i in range(5):  # per-hospital payloads between the round's messages (e.g. secure-aggregation stages)
        own = _round_messages(1)[0]
        assert shared.split(own)[1] == {}
    assert set(shared.split(msgs[2])[1]) == {"arrays"} and shared.puts == 1


def test_the_restoring_app_hands_the_clientapp_the_full_message(monkeypatch):
    store = FakeStore()
    monkeypatch.setattr(sw, "_fetch", store.get)  # what the actor's RestoringApp fetches with
    monkeypatch.setattr(sw, "_ACTOR_CACHE", {})
    shared = sw.SharedRecords(put=store.put)
    msg = _round_messages(1)[0]
    shared.split(msg)
    light, refs, order = shared.split(msg)
    assert refs
    seen = {}

    def client_app(message, context):
        seen["w"] = message.content["arrays"]["w"].data
        seen["context"] = context
        return "reply"

    app_fn = sw.RestoringAppFn(lambda: client_app, refs, order)
    reply = app_fn()(message=pickle.loads(pickle.dumps(light)), context="ctx")
    assert reply == "reply" and seen["context"] == "ctx"
    assert seen["w"] == msg.content["arrays"]["w"].data
