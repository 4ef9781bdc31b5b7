"""One hostile hospital never ends a run (issue 21, rows 7-10): the real coordinator (`server.run.Coordinator`)
runs a 2-round federation of five in-process hospitals (`simulation.inprocess.InProcessGrid`, the real
secure-aggregation stages), one of which sends a hostile reply; the run completes every round with the
others and exports a backbone, and the round's record names the hostile hospital (or, where masking hides
who it was, the hospitals involved)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import preflight as client_preflight
from client import secagg as client_secagg
from server.run import Coordinator
from simulation.inprocess import InProcessGrid
from xr0_core import record_keys as keys
from xr0_core.config import from_flat
from xr0_core.secagg.wire import CONSISTENCY, MASKED, REC, TRAIN_ACTION, WORDS

N = 5
NODES = [101 + 13 * i for i in range(N)]  # InProcessGrid's node ids
BAD = NODES[1]


def _step(node: int, name: str, shape) -> np.ndarray:
    """The known update of ``node`` for parameter ``name``: small, so honest rounds pass every bound."""
    seed = (node * 7919 + sum(map(ord, name))) % (2**32)
    return np.random.default_rng(seed).normal(0, 1e-3, shape).astype(np.float32)


def _weight(node: int) -> int:
    return 10 + node % 7


def fake_train(msg: Message, context: Context) -> Message:
    node = int(msg.metadata.dst_node_id)
    arrays = msg.content.array_records[keys.ARRAYS]
    new = {k: arrays[k].numpy() + _step(node, k, arrays[k].numpy().shape) for k in arrays}
    metrics = MetricRecord({keys.NUM_EXAMPLES: _weight(node), "loss": 1.0 + node % 3})
    return Message(RecordDict({keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in new.items()}),
                               keys.METRICS: metrics}), reply_to=msg)


def fake_evaluate(msg: Message, context: Context) -> Message:
    return Message(RecordDict({keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 4, "knn-anatomy": 0.5,
                                                          "knn-anatomy-random": 0.25})}), reply_to=msg)


def _app(mod) -> ClientApp:
    app = ClientApp(mods=[mod] if mod else [])
    app.train()(fake_train)
    app.evaluate()(fake_evaluate)
    app.query(keys.PREFLIGHT)(client_preflight.ready)  # the coordinator's preflight: these hospitals always take part
    client_secagg.register(app, fake_train, client_secagg.in_memory_trust())
    return app


def _round_of(msg: Message) -> int:
    config = msg.content.config_records.get(keys.CONFIG)
    if config is not None and keys.SERVER_ROUND in config:
        return int(config[keys.SERVER_ROUND])
    return int(msg.metadata.group_id)  # the secure-aggregation stages name their round in the group id


def _hostile(message_type: str, edit, rounds=(1, 2)):
    """A Flower mod: ``edit(reply)`` on BAD's reply to ``message_type`` in the given rounds (a hostile hospital)."""

    def mod(msg: Message, context: Context, call_next):
        reply = call_next(msg, context)
        if (msg.metadata.message_type == message_type and int(context.node_id) == BAD and not reply.has_error()
                and _round_of(msg) in rounds):
            edit(reply)
        return reply

    return mod


def _run(tmp_path, mod, secagg: bool, **over):
    cfg = from_flat({"preset": "cpu-tiny", "federation.rounds": 2, "federation.out-dir": str(tmp_path / "out"),
                     "secagg.enabled": secagg, "eval.tasks": "none", "federation.min-replies": 2, **over})
    summary = Coordinator(cfg).run(InProcessGrid(_app(mod), N))
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["rounds"]
    return summary, [r for r in history if r["kind"] == "train"], [r for r in history if r["kind"] == "evaluate"]


def _site(entry, node):
    return next(s for s in entry["sites"] if s["node_id"] == node)


def _completed(summary, train, tmp_path):
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2, summary["stop_reason"]
    assert len(train) == 2
    assert (tmp_path / "out" / "backbone.safetensors").is_file()


def _words(edit):
    def apply(reply):
        words = reply.content.array_records[MASKED][WORDS].numpy().copy()
        edit(words)
        reply.content.array_records[MASKED] = ArrayRecord({WORDS: Array(words)})
    return apply


# ---- row 7: under secure aggregation ------------------------------------------------------------------------
@pytest.mark.parametrize("what,edit", [
    ("2^28 added to one word", lambda w: w.__setitem__(3, np.uint32((int(w[3]) + (1 << 28)) % (1 << 32)))),
    ("a negative weight word", lambda w: w.__setitem__(-1, np.uint32((int(w[-1]) - (1 << 30)) % (1 << 32)))),
])
def test_out_of_range_words_skip_one_update_and_the_run_completes(tmp_path, what, edit):
    summary, train, _ = _run(tmp_path, _hostile(f"train.{TRAIN_ACTION}", _words(edit), rounds=(1,)), secagg=True)
    _completed(summary, train, tmp_path)
    first, second = train
    assert not first["updated"] and first["fault"] == "unattributable"
    assert sorted(first["involved"]) == NODES  # masking hides which uploader it was: all five are named
    assert all(s["status"] == "skipped" for s in first["sites"])
    assert "outside what 5 honest uploads can give" in first["reason"]
    assert second["updated"] and all(s["status"] == "ok" for s in second["sites"])


def test_the_same_set_failing_twice_stops_the_run_with_the_reason(tmp_path):
    edit = lambda w: w.__setitem__(3, np.uint32((int(w[3]) + (1 << 28)) % (1 << 32)))  # noqa: E731
    summary, train, _ = _run(tmp_path, _hostile(f"train.{TRAIN_ACTION}", _words(edit)), secagg=True)
    assert summary["status"] == "stopped" and len(train) == 2  # round 1 forgiven, round 2 (same set) counts
    assert "out of range" in summary["stop_reason"]


def test_empty_masked_upload_drops_that_hospital_and_the_others_train(tmp_path):
    empty = lambda reply: reply.content.array_records.__setitem__(  # noqa: E731
        MASKED, ArrayRecord({WORDS: Array(dtype="uint32", shape=(7,), stype="numpy.ndarray", data=b"")}))
    summary, train, _ = _run(tmp_path, _hostile(f"train.{TRAIN_ACTION}", empty), secagg=True)
    _completed(summary, train, tmp_path)
    for entry in train:
        assert entry["updated"] and entry["metrics"]["secagg-uploads"] == N - 1
        assert _site(entry, BAD)["status"] == "dropped" and "masked-upload: malformed reply" in _site(entry, BAD)["reason"]


def test_a_missing_consistency_signature_does_not_stop_the_others(tmp_path):
    def unsign(reply):
        rec = dict(reply.content.config_records[REC])
        rec.pop("view-sig")
        reply.content.config_records[REC] = type(reply.content.config_records[REC])(rec)

    summary, train, _ = _run(tmp_path, _hostile(f"query.{CONSISTENCY}", unsign), secagg=True)
    _completed(summary, train, tmp_path)
    for entry in train:  # 4 of 5 pinned hospitals signed: the quorum (more than (5 + t - 1) / 2 = 3.5) holds
        assert entry["updated"]
        assert "consistency" in _site(entry, BAD)["reason"]
        # the record shows how many peer keys each hospital pinned (in this harness each pins the keys published
        # before its own setup, so the last one to set up pinned the other four)
        assert all("secagg-pinned" in _site(entry, n)["metrics"] for n in NODES if n != BAD), entry["sites"]
        assert _site(entry, NODES[-1])["metrics"]["secagg-pinned"] == N - 1, entry["sites"]


# ---- rows 8-10: plain rounds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_partition_id_drops_that_hospital(tmp_path, value):
    def bad_pid(reply):
        m = dict(reply.content.metric_records[keys.METRICS])
        m["partition-id"] = value
        reply.content.metric_records[keys.METRICS] = MetricRecord(m)

    both = _hostile("train", bad_pid)
    evaluate_too = _hostile("evaluate", bad_pid)

    def mod(msg, context, call_next):
        return both(msg, context, lambda m, c: evaluate_too(m, c, call_next))

    summary, train, evals = _run(tmp_path, mod, secagg=False)
    _completed(summary, train, tmp_path)
    for entry in train + evals:
        assert _site(entry, BAD)["status"] == "dropped" and "partition-id" in _site(entry, BAD)["reason"]
        assert _site(entry, BAD)["name"] == f"node-{BAD}"
    assert all(entry["updated"] for entry in train)


def test_empty_bytes_array_in_a_plain_round_drops_that_hospital(tmp_path):
    def empty(reply):
        arrays = reply.content.array_records[keys.ARRAYS]
        name = sorted(arrays)[0]
        new = {k: arrays[k] for k in arrays}
        new[name] = Array(dtype="float32", shape=tuple(arrays[name].shape), stype="numpy.ndarray", data=b"")
        reply.content.array_records[keys.ARRAYS] = ArrayRecord(new)

    summary, train, _ = _run(tmp_path, _hostile("train", empty), secagg=False)
    _completed(summary, train, tmp_path)
    for entry in train:
        assert entry["updated"] and _site(entry, BAD)["status"] == "dropped"
        assert "malformed reply" in _site(entry, BAD)["reason"]


def test_a_huge_num_examples_counts_as_the_weight_cap(tmp_path):
    def huge(reply):
        m = dict(reply.content.metric_records[keys.METRICS])
        m[keys.NUM_EXAMPLES] = 1e300
        reply.content.metric_records[keys.METRICS] = MetricRecord(m)

    summary, train, _ = _run(tmp_path, _hostile("train", huge, rounds=(1,)), secagg=False,
                             **{"federation.weight-cap": 100.0})
    _completed(summary, train, tmp_path)
    first = train[0]
    assert first["updated"] and _site(first, BAD)["status"] == "ok"
    assert _site(first, BAD)["metrics"][keys.NUM_EXAMPLES] == 100.0 and "weight-cap" in _site(first, BAD)["reason"]
    # The aggregate is the weighted mean with BAD at the cap: check one parameter against it.
    from safetensors.numpy import load_file

    from xr0_core.ssl.factory import initial_shared_state

    cfg = from_flat({"preset": "cpu-tiny"})
    start = {k: v.numpy() for k, v in initial_shared_state(cfg).items()}
    got = load_file(str(tmp_path / "out" / "checkpoints" / "round-0001" / "weights.safetensors"))
    name = sorted(start)[0]
    w = {u: (100.0 if u == BAD else _weight(u)) for u in NODES}
    expect = start[name] + sum(w[u] * _step(u, name, start[name].shape).astype(np.float64) for u in NODES) / sum(w.values())
    assert np.abs(got[name] - expect).max() < 1e-6
    assert w[BAD] / sum(w.values()) < 0.7  # not all the weight


def test_an_update_larger_than_the_model_is_refused_by_default(tmp_path):
    def scaled(reply):
        arrays = reply.content.array_records[keys.ARRAYS]
        reply.content.array_records[keys.ARRAYS] = ArrayRecord({k: Array(arrays[k].numpy() * 1e3) for k in arrays})

    summary, train, _ = _run(tmp_path, _hostile("train", scaled), secagg=False)
    _completed(summary, train, tmp_path)
    for entry in train:
        assert entry["updated"] and "max-update-ratio" in _site(entry, BAD)["reason"]
        assert all(_site(entry, u)["status"] == "ok" for u in NODES if u != BAD)  # honest updates pass
