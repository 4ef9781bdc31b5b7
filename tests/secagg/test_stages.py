"""Server and client stages over Flower messages (in process): exact mean, dropouts at every stage,
clean skip below threshold, nothing per-site in what the server receives or records, upload size."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fakeclient import SHAPES, build, known_update, known_weight
from strategies.aggregate import ServerOptimizer
from strategies.fedavg_ssl import numpy_to_arrays
from simulation.inprocess import InProcessGrid
from strategies.secagg import SecAggGrid, SecAggSettings, XR0SecAggFedAvg
from xr0_core.secagg.wire import MASKED, SETUP, SHARE_KEYS, TRAIN_ACTION, UNMASK, WORDS

STAGE_TYPES = {"setup": f"query.{SETUP}", "share-keys": f"query.{SHARE_KEYS}",
               "masked-upload": f"train.{TRAIN_ACTION}", "unmask": f"query.{UNMASK}"}
INIT = {k: np.full(s, 0.25, np.float32) for k, s in SHAPES.items()}


def _round(n=4, drop=None, settings=SecAggSettings(), min_replies=2):
    grid = InProcessGrid(build(), n, drop=drop)
    outcomes = []
    strategy = XR0SecAggFedAvg(round_offset=0, local_steps=1, total_rounds=1, run_seed=0, run_key="rk",
                               config_hash="h", server_optimizer=ServerOptimizer(), min_replies=min_replies,
                               on_round_end=outcomes.append)
    strategy.start(grid=SecAggGrid(grid, settings, rng=random.Random(1)), initial_arrays=numpy_to_arrays(INIT),
                   num_rounds=1, train_config=ConfigRecord(), evaluate_config=ConfigRecord())
    return grid, [o for o in outcomes if o.kind == "train"][0]


def _expected(nodes):
    w = {u: known_weight(u) for u in nodes}
    return {k: INIT[k] + sum(w[u] * known_update(u)[k].astype(np.float64) for u in nodes) / sum(w.values())
            for k in SHAPES}


def _max_err(outcome, nodes):
    exp = _expected(nodes)
    return max(np.abs(outcome.arrays[k].numpy().astype(np.float64) - exp[k]).max() for k in SHAPES)


def test_secure_round_equals_plain_weighted_mean():
    grid, out = _round()
    assert out.updated and out.metrics["secagg-uploads"] == 4
    # bound of the quantization + fp32 rounding of the stored global weights
    assert _max_err(out, grid.node_ids) <= out.metrics["secagg-error-bound"] + 1e-6
    assert out.metrics["num-examples"] == pytest.approx(sum(known_weight(u) for u in grid.node_ids), rel=1e-6)


@pytest.mark.parametrize("stage", list(STAGE_TYPES))
def test_dropout_at_each_stage(stage):
    victim = 101 + 13  # second node
    grid, out = _round(n=5, drop=lambda mtype, node: mtype == STAGE_TYPES[stage] and node == victim)
    assert out.updated
    in_sum = grid.node_ids if stage == "unmask" else [u for u in grid.node_ids if u != victim]
    assert _max_err(out, in_sum) <= out.metrics["secagg-error-bound"] + 1e-6
    status = {s.node_id: (s.status, s.reason) for s in out.sites}
    if stage != "unmask":
        assert status[victim][0] == "dropped" and stage in status[victim][1]


def test_below_threshold_skips_round_and_keeps_weights():
    gone = {101, 114, 127}  # 3 of 5 vanish at upload; t = 3
    grid, out = _round(n=5, drop=lambda mtype, node: mtype == STAGE_TYPES["masked-upload"] and node in gone)
    assert not out.updated and out.arrays is None
    assert out.metrics["secagg-skipped"] == 1.0
    assert sum(s.status == "dropped" for s in out.sites) >= 3


def test_server_never_holds_a_single_plaintext_update():
    grid, out = _round(n=3)
    plain = {u: np.concatenate([(INIT[k] + known_update(u)[k]).ravel() for k in sorted(SHAPES)]) for u in grid.node_ids}
    deltas = {u: np.concatenate([known_update(u)[k].ravel() for k in sorted(SHAPES)]) for u in grid.node_ids}
    for reply in grid.received:  # every message the coordinator got
        for rec in reply.content.array_records.values():
            for arr in rec.values():
                a = arr.numpy()
                assert a.dtype.kind == "u"  # only masked ring words, never floats
                for u in grid.node_ids:
                    for target in (plain[u], deltas[u]):
                        if a.size - 1 == target.size:
                            # masked words carry no linear trace of the update
                            assert abs(np.corrcoef(a[:-1].astype(np.float64), target)[0, 1]) < 0.5
        if reply.metadata.message_type == STAGE_TYPES["masked-upload"]:
            for rec in reply.content.metric_records.values():
                assert "num-examples" not in rec  # the weight travels only inside the masked vector
    record = json.dumps(out.to_json())  # what the coordinator writes to metrics.json / checkpoints
    for u in grid.node_ids:
        assert f"{deltas[u][0]:.6g}" not in record


def test_upload_is_fp32_model_size():
    grid, _ = _round(n=3)
    plain_bytes = sum(len(a.data) for a in numpy_to_arrays(INIT).values())  # what a plain reply carries
    uploads = [r for r in grid.received if r.has_content() and MASKED in r.content.array_records]
    assert len(uploads) == 3
    for reply in uploads:
        words = reply.content.array_records[MASKED][WORDS]
        assert words.dtype == "uint32"
        assert len(words.data) <= plain_bytes + 4  # 1.0 x the fp32 model (+ the one weight word)
