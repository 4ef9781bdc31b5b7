"""A hospital that was sent a message and did not answer before the round timeout is listed as dropped,
with that reason, in train and in evaluate rounds (issue 22, row 5: an evaluation that ran past the timeout
was reported as "2/2 sites ok")."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from server.run import evaluation_summary
from strategies.aggregate import ServerOptimizer
from strategies.fedavg_ssl import XR0FedAvg, numpy_to_arrays
from simulation.inprocess import InProcessGrid
from xr0_core import record_keys as keys

INIT = {"w": np.zeros((3, 2), np.float32)}


def _app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records[keys.ARRAYS]
        new = {k: arrays[k].numpy() + 0.5 for k in arrays}
        return Message(RecordDict({keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 2})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 4, "knn-anatomy": 0.8,
                                                                "knn-anatomy-random": 0.6})}), reply_to=msg)

    return app


def _run(drop, vanish=None):
    grid = InProcessGrid(_app(), 3, drop=drop, vanish=vanish)
    seen = []
    strategy = XR0FedAvg(round_offset=0, local_steps=1, total_rounds=1, run_seed=0, run_key="k", config_hash="h",
                         server_optimizer=ServerOptimizer(), min_replies=1, on_round_end=seen.append,
                         round_timeout=400.0)
    strategy.start(grid=grid, initial_arrays=numpy_to_arrays(INIT), num_rounds=1, train_config=ConfigRecord(),
                   evaluate_config=ConfigRecord())
    return grid, {o.kind: o for o in seen}


def test_an_evaluation_past_the_timeout_is_a_drop_with_its_reason():
    late = 101 + 26  # the third node of InProcessGrid
    grid, out = _run(lambda message_type, node: message_type == "evaluate" and node == late)
    ev = out["evaluate"].to_json()
    by = {s["node_id"]: s for s in ev["sites"]}
    assert set(by) == set(grid.node_ids)
    assert by[late]["status"] == "dropped"
    assert by[late]["reason"] == "evaluate: no reply within federation.round-timeout (400 s)"
    for s in ev["sites"]:
        s["name"] = f"node-{s['node_id']}"
    assert evaluation_summary(ev).startswith("2/3 sites ok")
    assert [s.status for s in out["train"].sites] == ["ok"] * 3


def test_a_train_reply_past_the_timeout_is_a_drop_and_the_round_goes_on():
    late = 101
    _, out = _run(lambda message_type, node: message_type == "train" and node == late)
    train = out["train"]
    assert train.updated
    dropped = [s for s in train.sites if s.status == "dropped"]
    assert [s.node_id for s in dropped] == [late] and "no reply within" in dropped[0].reason
    assert np.allclose(train.arrays["w"].numpy(), 0.5)


def test_a_hospital_whose_supernode_died_is_listed_once_under_its_own_node():
    """The SuperLink answers for a dead SuperNode (NODE_UNAVAILABLE, src = the SuperLink's id): that is one
    ``failed`` outcome of the hospital it was sent to, not a failure of "node 1" plus a silent drop."""
    dead = 101 + 13
    grid, out = _run(lambda _t, _n: False, vanish=lambda message_type, node: node == dead)
    for kind in ("train", "evaluate"):
        by = {s.node_id: s for s in out[kind].sites}
        assert sorted(by) == sorted(grid.node_ids), (kind, out[kind].sites)
        assert by[dead].status == "failed" and "Node Unavailable" in by[dead].reason
        assert [by[n].status for n in grid.node_ids if n != dead] == ["ok", "ok"]
    assert out["train"].updated
