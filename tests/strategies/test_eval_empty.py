"""A hospital with nothing to evaluate (no labelled held-out images) is 'empty', not 'dropped', and the
coordinator's line says "nothing to evaluate" rather than "0/4 sites ok"."""

from __future__ import annotations

from types import SimpleNamespace

from flwr.app import MetricRecord

from server.run import evaluation_summary
from strategies.aggregate import ServerOptimizer
from strategies.fedavg_ssl import XR0FedAvg


def _reply(node: int, metrics: dict) -> SimpleNamespace:
    """What aggregate_evaluate reads of a reply Message (a real one needs a running app)."""
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), has_error=lambda: False,
                           content=SimpleNamespace(metric_records={"metrics": MetricRecord(metrics)}))


def _strategy(seen: list) -> XR0FedAvg:
    return XR0FedAvg(round_offset=0, local_steps=1, total_rounds=1, run_seed=0, run_key="k", config_hash="h",
                     server_optimizer=ServerOptimizer(kind="fedavg", lr=1.0, momentum=0.0), on_round_end=seen.append)


def test_unlabelled_hospitals_have_nothing_to_evaluate():
    seen: list = []
    _strategy(seen).aggregate_evaluate(1, [_reply(n, {"num-examples": 0, "partition-id": n}) for n in range(4)])
    entry = seen[0].to_json()
    assert [s["status"] for s in entry["sites"]] == ["empty"] * 4
    for s in entry["sites"]:
        s["name"] = f"hospital{s['node_id']}"
    line = evaluation_summary(entry)
    assert line.startswith("nothing to evaluate") and "dropped" not in line and "0/4" not in line


def test_a_reply_without_num_examples_is_still_dropped():
    seen: list = []
    _strategy(seen).aggregate_evaluate(1, [_reply(1, {"num-examples": 12, "knn-anatomy": 0.9,
                                                      "knn-anatomy-random": 0.7}),
                                           _reply(2, {"knn-anatomy": 0.5}), _reply(3, {"num-examples": 0})])
    entry = seen[0].to_json()
    assert [s["status"] for s in entry["sites"]] == ["ok", "dropped", "empty"]
    for s in entry["sites"]:
        s["name"] = f"hospital{s['node_id']}"
    line = evaluation_summary(entry)
    assert line.startswith("1/3 sites ok, 1 with nothing to evaluate; anatomy k-NN 0.900 vs random init 0.700")
