"""simulation/shared_weights.out_of_band: a reply's large arrays travel as out-of-band buffers, unchanged."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from simulation import shared_weights as sw
from strategies.fedavg_ssl import reply_arrays
from xr0_core.secagg.wire import array_view


@pytest.fixture(autouse=True)
def identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 0), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _reply():
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((300, 70)).astype(np.float32), "b": np.arange(3, dtype=np.float32)}
    rec = ArrayRecord({k: Array(v) for k, v in weights.items()})
    msg = Message(content=RecordDict({"arrays": rec, "metrics": MetricRecord({"num-examples": 4.0})}),
                  message_type="train", dst_node_id=1)
    return msg, rec, weights


def test_large_arrays_go_out_of_band_and_arrive_with_the_same_bytes():
    msg, rec, weights = _reply()
    before = {k: a.data for k, a in rec.items()}
    out = sw.out_of_band(msg)
    buffers = []
    blob = pickle.dumps(out, protocol=5, buffer_callback=buffers.append)  # as Ray pickles a task's result
    assert len(buffers) == 1 and len(blob) < 2048  # the 84 kB array left the pickle; the 3-float one stayed
    back = pickle.loads(blob, buffers=buffers)
    got = back.content["arrays"]
    assert bytes(memoryview(got["w"].data)) == before["w"] and got["b"].data == before["b"]
    for k, v in weights.items():  # what the coordinator reads: equal arrays, through all three readers
        assert np.array_equal(reply_arrays(got)[k], v) and np.array_equal(got[k].numpy(), v)
        assert np.array_equal(array_view(got[k]), v)  # secure aggregation's reader
    assert dict(back.content["metrics"]) == {"num-examples": 4.0}
    assert all(a.data is before[k] for k, a in rec.items())  # the actor's own Arrays are left as they were


def test_error_replies_and_small_replies_are_left_alone():
    msg, _, _ = _reply()
    small = Message(content=RecordDict({"m": MetricRecord({"x": 1.0})}), reply_to=msg)
    assert sw.out_of_band(small) is small and list(small.content.keys()) == ["m"]
