"""The SecAgg+ math without Flower: exactness, dropouts, threshold, share authenticity, uniformity, overflow."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from helpers import Federation, make_params, run_round
from xr0_core.secagg import keys, shamir
from xr0_core.secagg.protocol import SecAggAbort, SecAggError
from xr0_core.secagg.quantize import QuantSpec, decode_mean, mean_error_bound, quantize

STAGES = ("setup", "share-keys", "masked-upload", "unmask")  # where dropouts are tolerated
ALL_STAGES = STAGES + ("consistency",)


def _data(nodes, p=500, seed=0):
    rng = np.random.default_rng(seed)
    ups = {u: rng.normal(0, 0.2, p).astype(np.float32) for u in nodes}
    ws = {u: float(rng.integers(5, 90)) for u in nodes}
    return ups, ws


def _exact(ups, ws, who):
    return sum(ws[u] * ups[u].astype(np.float64) for u in who) / sum(ws[u] for u in who)


def test_unmasked_mean_equals_weighted_mean_within_bound():
    params, graph = make_params(5)
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    total, server = run_round(ups, ws, params, graph)
    mean, total_wq = decode_mean(total, params.quant)
    err = np.abs(mean - _exact(ups, ws, nodes)).max()
    bound = mean_error_bound(params.quant, 5, total_wq)
    assert err <= bound
    assert bound < 1e-7  # and the bound is tight enough to matter


@pytest.mark.parametrize("stage", STAGES)
def test_dropouts_up_to_n_minus_t_at_each_stage_still_exact(stage):
    params, graph = make_params(6)  # all-to-all: 6 holders, t = 4 -> up to 2 dropouts
    nodes = sorted(graph)
    ups, ws = _data(nodes, seed=1)
    n_drop = len(nodes) - params.threshold
    for gone in itertools.islice(itertools.combinations(nodes, n_drop), 3):
        total, server = run_round(ups, ws, params, graph, drop={stage: set(gone)})
        mean, total_wq = decode_mean(total, params.quant)
        # dropouts before the upload are not in the sum; dropouts at unmask uploaded and are in it
        survivors = nodes if stage == "unmask" else [u for u in nodes if u not in gone]
        assert sorted(server.uploaded) == sorted(survivors)
        err = np.abs(mean - _exact(ups, ws, survivors)).max()
        assert err <= mean_error_bound(params.quant, len(survivors), total_wq)


def test_dropouts_spread_over_stages_with_sparse_neighbours():
    params, graph = make_params(10, k=6)  # SecAgg+: 6 neighbours, t = 4 of 7 holders
    nodes = sorted(graph)
    ups, ws = _data(nodes, seed=2)
    drop = {"share-keys": {nodes[0]}, "masked-upload": {nodes[5]}, "unmask": {nodes[7]}}
    total, server = run_round(ups, ws, params, graph, drop=drop)
    mean, total_wq = decode_mean(total, params.quant)
    survivors = [u for u in nodes if u not in (nodes[0], nodes[5])]
    assert np.abs(mean - _exact(ups, ws, survivors)).max() <= mean_error_bound(params.quant, 8, total_wq)


@pytest.mark.parametrize("stage", ALL_STAGES)
def test_below_threshold_aborts_cleanly(stage):
    params, graph = make_params(5)  # t = 3
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    with pytest.raises(SecAggAbort, match="skipped|threshold"):
        run_round(ups, ws, params, graph, drop={stage: set(nodes[:3])})


def _two_sessions():
    params, graph = make_params(3)
    a, b, c = sorted(graph)
    fed = Federation(params, graph, 11)
    fed.setup()
    fed.share_keys()
    return params, graph, fed.sessions, fed.server, (a, b, c)


def test_tampered_share_is_rejected():
    _, _, sess, server, (a, b, c) = _two_sessions()
    incoming = server.shares_for(b)
    blob = bytearray(incoming[a])
    blob[-5] ^= 1
    incoming[a] = bytes(blob)
    assert sess[b].receive_shares(incoming) == [a]  # a is not a mask peer of b; the server is told
    assert a not in sess[b].received and c in sess[b].received


def test_swapped_sender_or_receiver_is_rejected():
    _, _, sess, server, (a, b, c) = _two_sessions()
    for_b, for_c = server.shares_for(b), server.shares_for(c)
    assert sess[b].receive_shares({a: for_c[a], c: for_b[c]}) == [a]  # a's share to c re-addressed to b
    _, _, sess, server, (a, b, c) = _two_sessions()
    for_b = server.shares_for(b)
    with pytest.raises(SecAggError, match="2 failed authentication"):  # a's share claimed as c's and back
        sess[b].receive_shares({a: for_b[c], c: for_b[a]})


def test_share_replayed_from_another_round_is_rejected():
    params, graph, sess, server, (a, b, c) = _two_sessions()
    old = server.shares_for(b)[a]
    # Next round: same nodes; even a client that reused its channel key would bind the ciphertext to round 1.
    tag2 = keys.round_tag(params.run_key, params.server_round + 1)
    with pytest.raises(keys.ShareRejected):
        keys.decrypt_share(sess[b].c.private, sess[a].c.public, tag2, a, b, old)
    # and with the round's real flow: a fresh round's session cannot open it
    params2, _ = make_params(3, round_=2)
    fed2 = Federation(params2, graph, 11)
    fed2.setup()
    fresh = fed2.sessions[b]
    fresh.share_keys(fed2.server.peer_keys(b))
    with pytest.raises(SecAggError, match="1 failed authentication"):
        fresh.receive_shares({a: old})


def test_unmask_refuses_both_shares_and_second_request():
    params, graph = make_params(4)
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    fed = Federation(params, graph, 501)
    fed.setup()
    fed.share_keys()
    fed.upload(ups, ws)
    fed.consistency()
    sess, sigs = fed.sessions, fed.server.signatures
    u, v = nodes[0], nodes[1]
    with pytest.raises(SecAggError, match="both"):
        sess[u].unmask([u, v, nodes[2]], [v], sigs)
    with pytest.raises(SecAggError, match="out of order"):
        sess[u].unmask(nodes, [], sigs)


def test_masked_upload_is_uniform_chi_square():
    params, graph = make_params(3, bits=32)
    nodes = sorted(graph)
    zeros = {u: np.zeros(40_000, np.float32) for u in nodes}  # the most structured input there is
    record: list[np.ndarray] = []
    run_round(zeros, {u: 10.0 for u in nodes}, params, graph, record=record)
    words = record[0][:-1]
    for shift in (0, 8, 16, 24):  # every byte lane of the 32-bit words
        counts = np.bincount(((words >> shift) & 0xFF).astype(np.int64), minlength=256)
        assert chisquare(counts).pvalue > 1e-4
    top = np.bincount((words >> 28).astype(np.int64), minlength=16)
    assert chisquare(top).pvalue > 1e-4


def test_shamir_threshold():
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, [5, 9, 12, 40])
    for combo in itertools.combinations(shares.values(), 3):
        assert shamir.combine(list(combo), 3, 32) == secret
    with pytest.raises(shamir.ShamirError):
        shamir.combine(list(shares.values())[:2], 3, 32)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    bits=st.sampled_from([16, 32]),
    value_range=st.floats(1e-3, 1e3),
    data=st.data(),
)
def test_sum_of_n_extreme_uploads_never_overflows(n, bits, value_range, data):
    spec = QuantSpec(bits, value_range, n)
    sign = data.draw(st.sampled_from([-1.0, 1.0]))
    scale = data.draw(st.floats(0.5, 1e6))  # beyond the range: clipped, still no wrap
    fracs = data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
    total = np.zeros(3, dtype=spec.dtype)
    wqs = []
    for f in fracs:
        wq = spec.quantize_weight(f)
        wqs.append(wq)
        words, _ = quantize(np.full(2, sign * scale * value_range), wq, spec)
        total += words
    if sum(wqs) == 0:
        return
    mean, total_wq = decode_mean(total, spec)
    assert total_wq == sum(wqs)
    expected = sign * min(scale, 1.0) * value_range
    assert np.all(np.abs(mean - expected) <= mean_error_bound(spec, n, total_wq))
    assert np.all(np.sign(mean) == sign) or np.all(mean == 0)


def test_clipping_is_counted():
    spec = QuantSpec(32, 1.0, 4)
    _, clipped = quantize(np.array([0.5, 1.5, -3.0, 1.0]), spec.levels, spec)
    assert clipped == 2
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([np.nan]), 5, spec)


def test_protocol_core_imports_no_flower():
    root = Path(__file__).resolve().parents[2] / "xr0_core" / "secagg"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "flwr" for n in names), path
