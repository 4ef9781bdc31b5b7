"""Issue 27: secure aggregation streamed piece by piece gives the same words, bit for bit, as the materialised
computation; the coordinator sums masked uploads as they arrive, with the same result and the same robustness
to rejected shares. (Speed and peak memory are measured by bench/secagg.py, not asserted here.)"""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from client.secagg import flatten, update_pieces
from fakeclient import SHAPES, build, known_update, known_weight
from helpers import Federation, make_params
from simulation.inprocess import InProcessGrid
from strategies.aggregate import ServerOptimizer
from strategies.fedavg_ssl import numpy_to_arrays
from strategies.secagg import SecAggGrid, SecAggSettings, XR0SecAggFedAvg
from xr0_core.secagg.masks import CHUNK_WORDS, MaskStreams, apply_mask_inplace, expand_mask
from xr0_core.secagg.quantize import ChunkEncoder, QuantizationError, QuantSpec, check_sum, decode_mean, quantize
from xr0_core.secagg.session import ClientSession
from xr0_core.secagg.wire import REC, SHARE_KEYS, npy_view


def _cuts(n: int, rng: np.random.Generator) -> list[int]:
    """Random piece boundaries over [0, n], some pieces empty, some longer than a mask chunk."""
    inner = sorted(rng.integers(0, n + 1, size=7).tolist() + [CHUNK_WORDS + 3])
    return [0] + [c for c in inner if c <= n] + [n]


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_streamed_masks_equal_the_materialised_masks_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    n = 3 * CHUNK_WORDS + 77
    words = rng.integers(0, np.iinfo(dtype).max, n, dtype=dtype)
    masks = [(os.urandom(32), +1), (os.urandom(32), -1), (os.urandom(32), +1)]
    expected = words.copy()
    for seed, sign in masks:  # the materialised reference: each whole mask vector, one after the other
        m = expand_mask(seed, n, dtype)
        expected = expected + m if sign > 0 else expected - m
    streamed = words.copy()
    streams = MaskStreams(masks, dtype)
    cuts = _cuts(n, rng)
    for a, b in zip(cuts, cuts[1:]):
        streams.apply_inplace(streamed[a:b])
    assert np.array_equal(streamed, expected)
    one = words.copy()
    for seed, sign in masks:
        apply_mask_inplace(one, seed, sign)
    assert np.array_equal(one, expected)
    assert not np.array_equal(streamed, words)  # the masks did something


def test_mask_streams_refuse_a_wrong_word_type():
    with pytest.raises(ValueError, match="uint16 or uint32"):
        MaskStreams([(os.urandom(32), 1)], np.int32)
    with pytest.raises(ValueError, match="32 bytes"):
        MaskStreams([(b"short", 1)], np.uint32)
    with pytest.raises(ValueError, match="contiguous 1-D"):
        MaskStreams([(os.urandom(32), 1)], np.uint32).apply_inplace(np.zeros(4, np.uint16))


@pytest.mark.parametrize("bits", [16, 32])
def test_piecewise_quantization_equals_the_whole_vector_formula(bits):
    spec = QuantSpec(bits, 0.5, 4)
    rng = np.random.default_rng(1)
    update = rng.normal(0, 0.3, 2 * CHUNK_WORDS + 11).astype(np.float32)  # some beyond +-R: clipped
    wq = spec.levels - 3
    clipped = np.clip(update.astype(np.float64), -0.5, 0.5)
    reference = np.rint(clipped * (wq / 0.5)).astype(np.int64).astype(spec.dtype)  # the pre-issue-27 encoding
    enc = ChunkEncoder(wq, spec)
    out = np.empty(update.size, spec.dtype)
    cuts = _cuts(update.size, rng)
    for a, b in zip(cuts, cuts[1:]):
        enc.encode_into(update[a:b], out[a:b])
    assert np.array_equal(out, reference)
    assert enc.clipped == int(np.count_nonzero(np.abs(update) > 0.5)) > 0
    words, n_clipped = quantize(update, wq, spec)
    assert np.array_equal(words[:-1], reference) and words[-1] == wq and n_clipped == enc.clipped


def test_a_nan_in_any_piece_is_refused():
    spec = QuantSpec(32, 1.0, 2)
    enc = ChunkEncoder(5, spec)
    out = np.empty(CHUNK_WORDS + 5, spec.dtype)
    d = np.zeros(CHUNK_WORDS + 5)
    d[CHUNK_WORDS + 2] = np.inf
    with pytest.raises(QuantizationError, match="NaN or infinite"):
        enc.encode_into(d, out)


def _received_session(n=4):
    params, graph = make_params(n)
    fed = Federation(params, graph, 0)
    fed.setup()
    fed.share_keys()
    u = sorted(graph)[1]
    fed.sessions[u].receive_shares(fed.server.shares_for(u))
    return fed.sessions[u]


def test_masking_in_pieces_equals_masking_the_whole_update():
    session = _received_session()
    twin = ClientSession.from_bytes(session.to_bytes())  # the same secrets, the same peers
    rng = np.random.default_rng(2)
    update = rng.normal(0, 0.02, 2 * CHUNK_WORDS + 500)
    whole = twin.mask(update, 40.0)
    cuts = _cuts(update.size, rng)
    pieces = session.mask_pieces((update[a:b] for a, b in zip(cuts, cuts[1:])), update.size, 40.0)
    assert np.array_equal(pieces.words, whole.words) and pieces.clipped == whole.clipped
    # the same as quantizing then adding every whole mask vector
    words, _ = quantize(update, twin.params.quant.quantize_weight(40.0 / twin.params.weight_cap), twin.params.quant)
    for seed, sign in twin._mask_seeds():
        m = expand_mask(seed, words.size, words.dtype)
        words = words + m if sign > 0 else words - m
    assert np.array_equal(words, whole.words)


def test_masking_refuses_an_update_of_another_length():
    session = _received_session()
    with pytest.raises(Exception, match="values, not the 12 announced"):
        session.mask_pieces([np.zeros(5), np.zeros(6)], 12, 10.0)
    session = _received_session()
    with pytest.raises(Exception, match="longer than the 10"):
        session.mask_pieces([np.zeros(5), np.zeros(6)], 10, 10.0)


def test_update_pieces_equal_the_flat_float64_difference():
    rng = np.random.default_rng(3)
    shapes = {"z.w": (CHUNK_WORDS + 9,), "a.b": (3, 4), "m": (2, CHUNK_WORDS)}
    old = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
    new = {k: (v + rng.normal(0, 1e-3, v.shape)).astype(np.float32) for k, v in old.items()}
    new_rec, old_rec = numpy_to_arrays(new), numpy_to_arrays(old)
    got = np.concatenate([p.copy() for p in update_pieces(new_rec, old_rec, None)])
    assert np.array_equal(got, flatten(new_rec) - flatten(old_rec))
    new["a.b"] = np.zeros(5, np.float32)
    with pytest.raises(Exception, match="'a.b' has 5 values, the global one 12"):
        list(update_pieces(numpy_to_arrays(new), old_rec, None))


def test_npy_view_reads_saved_arrays_without_copy_and_refuses_bad_bytes():
    for a in (np.arange(7, dtype=np.uint32), np.asfortranarray(np.ones((3, 2), np.float32)), np.zeros(0, np.uint16)):
        buf = io.BytesIO()
        np.save(buf, a)
        v = npy_view(buf.getvalue())
        assert v.dtype == a.dtype and v.shape == a.shape and np.array_equal(v, a) and not v.flags.writeable
    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="holds 12 bytes, its header says 16"):
        npy_view(buf.getvalue()[:-4])
    with pytest.raises(ValueError):
        npy_view(b"not an array")
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        npy_view(obj.getvalue())


def test_signed_views_check_and_decode_like_before():
    spec = QuantSpec(32, 1.0, 3)
    words = np.array([5, (1 << 32) - 7, 0, 10], dtype=np.uint32)  # coordinates 5, -7, 0; weight 10
    mean, total = decode_mean(words, spec)
    assert total == 10 and np.array_equal(mean, np.array([5, -7, 0]) * (1.0 / 10))
    assert check_sum(words, spec, 3) == 10
    words[1] = np.uint32((1 << 32) - 11)  # |-11| > 10
    with pytest.raises(QuantizationError, match="coordinate 1 sums to 11"):
        check_sum(words, spec, 3)


INIT = {k: np.full(s, 0.25, np.float32) for k, s in SHAPES.items()}


def _round(n, pull_batch, mods=()):
    grid = InProcessGrid(build(mods), n, pull_batch=pull_batch, keep=False)
    outcomes = []
    strategy = XR0SecAggFedAvg(round_offset=0, local_steps=1, total_rounds=1, run_seed=0, run_key="rk",
                               config_hash="h", server_optimizer=ServerOptimizer(), min_replies=2,
                               on_round_end=outcomes.append)
    strategy.start(grid=SecAggGrid(grid, SecAggSettings(), rng=random.Random(1)), initial_arrays=numpy_to_arrays(INIT),
                   num_rounds=1, train_config=ConfigRecord(), evaluate_config=ConfigRecord())
    return grid, [o for o in outcomes if o.kind == "train"][0]


def _exact(nodes):
    w = {u: known_weight(u) for u in nodes}
    return {k: INIT[k] + sum(w[u] * known_update(u)[k].astype(np.float64) for u in nodes) / sum(w.values())
            for k in SHAPES}


def test_uploads_summed_as_they_arrive_give_the_same_global_weights():
    _, one_batch = _round(4, None)
    grid, streamed = _round(4, 1)
    assert streamed.updated and one_batch.updated
    for k in SHAPES:  # the ring sum of the quantized updates is the same, so the decoded mean is too
        assert np.array_equal(streamed.arrays[k].numpy(), one_batch.arrays[k].numpy())
    assert grid.received == [] and grid.sent == []  # keep=False: the in-process SuperLink held nothing
    exp = _exact(grid.node_ids)
    err = max(np.abs(streamed.arrays[k].numpy().astype(np.float64) - exp[k]).max() for k in SHAPES)
    assert err <= streamed.metrics["secagg-error-bound"] + 1e-6


BAD = 101 + 13  # the second node of InProcessGrid


def _flip_last_share(msg: Message, context: Context, call_next):
    """BAD's share for its last destination (a node after it) is corrupted in transit."""
    reply = call_next(msg, context)
    if msg.metadata.message_type == f"query.{SHARE_KEYS}" and int(context.node_id) == BAD:
        rec = dict(reply.content.config_records[REC])
        cts = list(rec["ct"])
        cts[-1] = cts[-1][:-3] + bytes([cts[-1][-3] ^ 0x10]) + cts[-1][-2:]
        rec["ct"] = cts
        reply.content.config_records[REC] = ConfigRecord(rec)
    return reply


def test_a_rejection_after_the_senders_upload_was_summed_leaves_the_receiver_out():
    n = 5
    receiver = 101 + 13 * (n - 1)  # BAD's last destination: its reply arrives after BAD's
    # all replies at once: the sender is left out (as before streaming)
    _, out = _round(n, None, [_flip_last_share])
    sites = {s.node_id: s for s in out.sites}
    assert out.updated and sites[receiver].status == "ok" and sites[BAD].status == "dropped"
    assert f"node {receiver} could not authenticate the share it sent" in sites[BAD].reason
    # one reply at a time: BAD's upload is already in the sum when the receiver's rejection arrives
    grid, out = _round(n, 1, [_flip_last_share])
    sites = {s.node_id: s for s in out.sites}
    assert out.updated and sites[BAD].status == "ok" and sites[receiver].status == "dropped"
    assert f"could not authenticate node {BAD}'s share, whose upload was already in the sum" in sites[receiver].reason
    kept = [u for u in grid.node_ids if u != receiver]
    exp = _exact(kept)  # the receiver is an ordinary dropout: its masks with the summed nodes came off
    err = max(np.abs(out.arrays[k].numpy().astype(np.float64) - exp[k]).max() for k in SHAPES)
    assert err <= out.metrics["secagg-error-bound"] + 1e-6
