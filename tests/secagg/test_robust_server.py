"""One hospital sends malformed replies over real Flower messages (in process): the run goes on, the round
completes without that hospital or is skipped, and the round's record names the reason."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from fakeclient import SHAPES, build, known_update, known_weight
from strategies.aggregate import ServerOptimizer
from strategies.fedavg_ssl import numpy_to_arrays
from simulation.inprocess import InProcessGrid
from strategies.secagg import SecAggGrid, SecAggSettings, XR0SecAggFedAvg
from xr0_core.secagg.wire import MASKED, REC, SETUP, SHARE_KEYS, TRAIN_ACTION, UNMASK, WORDS

INIT = {k: np.full(s, 0.25, np.float32) for k, s in SHAPES.items()}
BAD = 101 + 13  # the second node of InProcessGrid


def _tamper(message_type: str, edit):
    """A Flower mod: ``edit(reply)`` on BAD's reply to ``message_type``."""

    def mod(msg: Message, context: Context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == message_type and int(context.node_id) == BAD and not reply.has_error():
            edit(reply)
        return reply

    return mod


def _rounds(n, mods, rounds=2):
    grid = InProcessGrid(build(mods), n)
    outcomes = []
    strategy = XR0SecAggFedAvg(round_offset=0, local_steps=1, total_rounds=rounds, run_seed=0, run_key="rk",
                               config_hash="h", server_optimizer=ServerOptimizer(), min_replies=2,
                               on_round_end=outcomes.append)
    strategy.start(grid=SecAggGrid(grid, SecAggSettings(), rng=random.Random(1)), initial_arrays=numpy_to_arrays(INIT),
                   num_rounds=rounds, train_config=ConfigRecord(), evaluate_config=ConfigRecord())
    return grid, [o for o in outcomes if o.kind == "train"]


def _err(outcome, nodes):
    w = {u: known_weight(u) for u in nodes}
    exp = {k: INIT[k] + sum(w[u] * known_update(u)[k].astype(np.float64) for u in nodes) / sum(w.values())
           for k in SHAPES}
    return max(np.abs(outcome.arrays[k].numpy().astype(np.float64) - exp[k]).max() for k in SHAPES)


def _set(reply, key, value):
    rec = dict(reply.content.config_records[REC])
    if value is None:
        rec.pop(key)
    else:
        rec[key] = value
    reply.content.config_records[REC] = ConfigRecord(rec)


def _site(outcome, node):
    return next(s for s in outcome.sites if s.node_id == node)


def test_missing_keys_drop_that_hospital_and_the_run_goes_on():
    grid, outs = _rounds(4, [_tamper(f"query.{SETUP}", lambda r: _set(r, "s-pk", None))])
    assert len(outs) == 2  # both rounds ran
    for out in outs:
        assert out.updated
        assert _site(out, BAD).status == "dropped" and "missing 's-pk'" in _site(out, BAD).reason
    others = [u for u in grid.node_ids if u != BAD]
    assert _err(outs[0], others) <= outs[0].metrics["secagg-error-bound"] + 1e-6


def test_missing_share_list_drops_that_hospital():
    _, outs = _rounds(4, [_tamper(f"query.{SHARE_KEYS}", lambda r: _set(r, "ct", None))], rounds=1)
    assert outs[0].updated and "share-keys: malformed reply" in _site(outs[0], BAD).reason


def test_flipped_share_byte_in_transit_drops_only_its_sender():
    def flip(reply):
        cts = list(reply.content.config_records[REC]["ct"])
        blob = bytearray(cts[0])
        blob[-3] ^= 0x10
        cts[0] = bytes(blob)
        _set(reply, "ct", cts)

    grid, outs = _rounds(5, [_tamper(f"query.{SHARE_KEYS}", flip)], rounds=1)
    out = outs[0]
    receiver = sorted(u for u in grid.node_ids if u != BAD)[0]  # first destination of BAD's shares
    assert out.updated
    assert _site(out, receiver).status == "ok"  # masks without BAD instead of dropping out
    assert _site(out, BAD).status == "dropped"
    assert f"node {receiver} could not authenticate the share it sent" in _site(out, BAD).reason
    assert _err(out, [u for u in grid.node_ids if u != BAD]) <= out.metrics["secagg-error-bound"] + 1e-6


def test_flipped_byte_in_a_returned_share_is_survived():
    def flip(reply):
        shares = [bytes(s[:-1]) + bytes([s[-1] ^ 1]) for s in reply.content.config_records[REC]["b-share"]]
        _set(reply, "b-share", shares)

    grid, outs = _rounds(5, [_tamper(f"query.{UNMASK}", flip)], rounds=1)
    out = outs[0]
    assert out.updated  # other subsets of t shares rebuilt every self mask
    assert _err(out, grid.node_ids) <= out.metrics["secagg-error-bound"] + 1e-6


def test_wrong_x_coordinate_is_ignored_and_named():
    def wrong_x(reply):
        shares = [(999).to_bytes(8, "big") + s[8:] for s in reply.content.config_records[REC]["b-share"]]
        _set(reply, "b-share", shares)

    grid, outs = _rounds(5, [_tamper(f"query.{UNMASK}", wrong_x)], rounds=1)
    out = outs[0]
    assert out.updated and _err(out, grid.node_ids) <= out.metrics["secagg-error-bound"] + 1e-6
    assert "wrong x-coordinate" in _site(out, BAD).reason


@pytest.mark.parametrize("what,index,delta,reason", [
    ("negative weight word", -1, -(1 << 30), "summed weight"),
    ("2^28 in one word", 3, 1 << 28, "coordinate 3 sums"),
])
def test_out_of_range_upload_skips_the_round_and_keeps_the_weights(what, index, delta, reason):
    def poison(reply):
        words = reply.content.array_records[MASKED][WORDS].numpy().copy()
        words[index] = np.uint32((int(words[index]) + delta) % (1 << 32))
        reply.content.array_records[MASKED] = ArrayRecord({WORDS: Array(words)})

    grid, outs = _rounds(4, [_tamper(f"train.{TRAIN_ACTION}", poison)])
    assert len(outs) == 2  # the run went on to round 2
    for out in outs:
        assert not out.updated and out.arrays is None and out.metrics["secagg-skipped"] == 1.0
        assert reason in out.reason and reason in out.to_json()["reason"]


def test_clear_metrics_reveal_no_size():
    grid, outs = _rounds(3, [], rounds=1)
    for reply in grid.received:
        if reply.metadata.message_type == f"train.{TRAIN_ACTION}":
            names = set(reply.content.metric_records["metrics"])
            assert not names & {"num-examples", "secagg-weight-capped", "sample-rate", "noise-multiplier"}
            assert "loss" in names  # the policy default lets the loss leave


def test_a_skipped_round_still_names_each_dropout():
    # 3 of 5 refuse at setup (t = 3 of 5 holders): the round is skipped and each refusal keeps its reason
    def refuse(msg, context, call_next):
        if msg.metadata.message_type == f"query.{SETUP}" and int(context.node_id) in (101, 114, 127):
            raise RuntimeError("site policy: refused")
        return call_next(msg, context)

    grid, outs = _rounds(5, [refuse], rounds=1)
    out = outs[0]
    assert not out.updated and "left after setup" in out.reason
    for node in (101, 114, 127):
        assert "site policy: refused" in _site(out, node).reason
    assert "setup: too few neighbours alive" in _site(out, 140).reason  # from the round's stage log
