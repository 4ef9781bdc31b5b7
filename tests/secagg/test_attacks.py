"""A coordinator that deviates from the protocol, and hospitals that send garbage: each attack of issue 11
reproduced on the pure protocol objects, and shown to fail (a refusal, or a skipped round)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from helpers import Federation, make_params, run_round
from xr0_core.secagg import identity, shamir
from xr0_core.secagg.protocol import ClientRules, PeerKeys, SecAggAbort, SecAggError, components
from xr0_core.secagg.session import ClientSession
from xr0_core.secagg.quantize import decode_mean, mean_error_bound


def _data(nodes, p=300, seed=0):
    rng = np.random.default_rng(seed)
    return ({u: rng.normal(0, 0.2, p).astype(np.float32) for u in nodes},
            {u: float(rng.integers(5, 90)) for u in nodes})


def _exact(ups, ws, who):
    return sum(ws[u] * ups[u].astype(np.float64) for u in who) / sum(ws[u] for u in who)


def _uploaded_federation(n=5, k=0, p=300, **kw):
    params, graph = make_params(n, k=k, **kw)
    nodes = sorted(graph)
    ups, ws = _data(nodes, p)
    fed = Federation(params, graph, p + 1)
    fed.setup()
    fed.share_keys()
    fed.upload(ups, ws)
    return fed, nodes, ups, ws


# ---- 1. partial sums when dropouts split the SecAgg+ graph ----------------------------------------------
def _splitting_pair(graph):
    for pair in itertools.combinations(sorted(graph), 2):
        if len(components(set(graph) - set(pair), graph)) > 1:
            return pair
    raise AssertionError("no pair of dropouts splits this graph")


def test_split_graph_is_skipped_by_the_server():
    params, graph = make_params(6, k=2)  # ring: 2 neighbours each, t = 2 of 3 holders
    assert params.threshold == 2
    gone = _splitting_pair(graph)
    ups, ws = _data(sorted(graph))
    with pytest.raises(SecAggAbort, match="split into 2 parts"):
        run_round(ups, ws, params, graph, drop={"masked-upload": set(gone)})


def test_split_graph_clients_refuse_to_sign_or_unmask():
    # A coordinator that skips its own connectivity check still gets nothing: every uploader refuses.
    params, graph = make_params(6, k=2)
    gone = set(_splitting_pair(graph))
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    fed = Federation(params, graph, 301)
    fed.setup()
    fed.share_keys()
    u2 = sorted(fed.server.shares)
    for u in nodes:
        if u not in gone:
            fed.sessions[u].receive_shares(fed.server.shares_for(u))
            fed.sessions[u].mask(ups[u], ws[u])
    u3 = [u for u in nodes if u not in gone]
    for u in u3:
        with pytest.raises(SecAggError, match="split"):
            fed.sessions[u].consistency(u2, u3, fed.server.announced, fed.sign[u])


# ---- 2a. withheld shares ----------------------------------------------------------------------------------
def test_withheld_shares_make_the_victim_refuse_to_upload():
    params, graph = make_params(5)  # t = 3
    fed = Federation(params, graph, 11)
    fed.setup()
    fed.share_keys()
    victim = sorted(graph)[0]
    with pytest.raises(SecAggError, match="refusing to upload"):
        fed.sessions[victim].receive_shares({})  # every share addressed to it withheld
    fed2 = Federation(params, graph, 11)
    fed2.setup()
    fed2.share_keys()
    one = dict(list(fed2.server.shares_for(victim).items())[:1])  # t - 2 shares: still too few
    with pytest.raises(SecAggError, match="refusing to upload"):
        fed2.sessions[victim].receive_shares(one)


def test_shares_withheld_after_upload_are_caught_in_the_consistency_round():
    # The coordinator forwards enough shares for the upload, but claims a peer that did share is not in U2.
    fed, nodes, ups, ws = _uploaded_federation(5)
    u2, u3 = fed.server.view()
    victim, peer = nodes[0], nodes[1]
    with pytest.raises(SecAggError, match="does not match the shares"):
        fed.sessions[victim].consistency([v for v in u2 if v != peer], [v for v in u3 if v != peer],
                                         fed.server.announced, fed.sign[victim])


# ---- 2b. t = 1, thresholds below the policy, and no majority -----------------------------------------------
@pytest.mark.parametrize("t,rules,match", [
    (1, ClientRules(), "below this site's minimum 2"),
    (3, ClientRules(min_threshold=4), "below this site's minimum 4"),
    (3, ClientRules(min_degree=7), "min-degree"),
])
def test_client_refuses_weak_round_parameters(t, rules, match):
    params, graph = make_params(5, threshold=t)
    with pytest.raises(SecAggError, match=match):
        ClientSession.start(params, sorted(graph)[0], graph, rules)


def test_client_refuses_a_threshold_that_is_no_majority_of_holders():
    params, graph = make_params(7, threshold=3)  # 7 holders: 3 + 3 < 7, two groups could rebuild b and s
    with pytest.raises(SecAggError, match="strict majority"):
        ClientSession.start(params, sorted(graph)[0], graph, ClientRules())


def test_t1_with_empty_neighbour_list_is_refused():
    params, _ = make_params(3, threshold=1)
    with pytest.raises(SecAggError, match="minimum"):
        ClientSession.start(params, 5, {5: ()}, ClientRules())


# ---- 2c. substituted keys and duplicate keys ---------------------------------------------------------------
def test_substituted_round_keys_are_refused():
    params, graph = make_params(4)
    fed = Federation(params, graph, 11)
    fed.setup()
    u, v = sorted(graph)[:2]
    peers = fed.server.peer_keys(u)
    # the coordinator puts its own round keys in for v, signed with a key it made (not pinned at u)
    evil_sign = identity.generate_signing_key()
    evil = ClientSession.start(params, v, graph, ClientRules()).announce(evil_sign)
    with pytest.raises(SecAggError, match="not one this site pinned"):
        fed.sessions[u].share_keys({**peers, v: evil})
    # ... or keeps v's signing key but swaps the round keys: the signature no longer verifies
    fed2 = Federation(params, graph, 11)
    fed2.setup()
    peers = fed2.server.peer_keys(u)
    swapped = PeerKeys(peers[sorted(peers)[1]].c, peers[v].s, peers[v].sign, peers[v].sig)
    with pytest.raises(SecAggError, match="not signed"):
        fed2.sessions[u].share_keys({**peers, v: swapped})


def test_duplicate_keys_are_refused():
    params, graph = make_params(4)
    nodes = sorted(graph)
    sign = {u: identity.generate_signing_key() for u in nodes}
    sign[nodes[2]] = sign[nodes[1]]  # one hospital's key shown for two nodes
    fed = Federation(params, graph, 11, sign=sign)
    sessions = fed.sessions
    peers = {v: sessions[v].announce(sign[v]) for v in nodes if v != nodes[0]}
    with pytest.raises(SecAggError, match="same signing public key"):
        sessions[nodes[0]].share_keys(peers)


# ---- 2d. different survivor lists for different clients ----------------------------------------------------
def test_inconsistent_survivor_lists_are_detected():
    fed, nodes, ups, ws = _uploaded_federation(5)  # t = 3, all uploaded
    victim = nodes[0]
    u2, u3 = fed.server.view()
    view_b = [u for u in u3 if u != victim]  # "victim dropped", shown to nodes 3 and 4
    group_a, group_b = nodes[:3], nodes[3:]
    sigs = {}
    for u in group_a:
        sigs[u] = (identity.public_of(fed.sign[u]),
                   fed.sessions[u].consistency(u2, u3, fed.server.announced, fed.sign[u]))
    for u in group_b:
        sigs[u] = (identity.public_of(fed.sign[u]),
                   fed.sessions[u].consistency(u2, view_b, fed.server.announced, fed.sign[u]))
    # group A would reveal victim's b, group B victim's s key: every one of them refuses
    for u in group_a:
        alive, dropped = fed.server.unmask_request(u)
        with pytest.raises(SecAggError, match="did not sign the transcript"):
            fed.sessions[u].unmask(alive, dropped, sigs)
    for u in group_b:
        alive = sorted((set(fed.sessions[u].received) - {victim}) | {u})
        with pytest.raises(SecAggError, match="did not sign the transcript|hospitals signed this session"):
            fed.sessions[u].unmask(alive, [victim], {v: sigs[v] for v in view_b})


def test_forged_signature_with_a_coordinator_key_is_refused():
    fed, nodes, ups, ws = _uploaded_federation(4)
    fed.consistency()
    sigs = dict(fed.server.signatures)
    evil = identity.generate_signing_key()
    u2, u3 = fed.server.view()
    msg = identity.view_message(fed.server.transcript(), nodes[3])
    sigs[nodes[3]] = (identity.public_of(evil), identity.sign(evil, msg))
    with pytest.raises(SecAggError, match="under another key than its announced one|not one this site pinned"):
        fed.sessions[nodes[0]].unmask(*fed.server.unmask_request(nodes[0]), sigs)


def test_unmask_request_must_follow_the_signed_lists():
    fed, nodes, ups, ws = _uploaded_federation(5)
    fed.consistency()
    u = nodes[0]
    alive, _ = fed.server.unmask_request(u)
    with pytest.raises(SecAggError, match="does not match the signed"):  # asks s of a node that uploaded
        fed.sessions[u].unmask([x for x in alive if x != nodes[1]], [nodes[1]], fed.server.signatures)


# ---- 4. a hospital's garbage never ends the run; reconstruction tries other subsets ------------------------
def _flip_y(share: bytes) -> bytes:
    b = bytearray(share)
    b[-1] ^= 0x01
    return bytes(b)


def test_corrupted_share_is_ignored_and_another_subset_used():
    params, graph = make_params(5)  # 5 holders, t = 3: two spare shares per secret
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    bad = nodes[2]

    def corrupt(u, reply):
        if u != bad:
            return reply
        bs, sks = reply
        return {o: _flip_y(s) for o, s in bs.items()}, sks

    total, server = run_round(ups, ws, params, graph, corrupt=corrupt)
    mean, total_wq = decode_mean(total, params.quant)
    assert np.abs(mean - _exact(ups, ws, nodes)).max() <= mean_error_bound(params.quant, 5, total_wq)


def test_wrong_x_coordinate_is_ignored_and_its_holder_noted():
    params, graph = make_params(5)
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    bad = nodes[1]

    def corrupt(u, reply):
        if u != bad:
            return reply
        bs, sks = reply
        other = shamir.holder_x(nodes[4]).to_bytes(8, "big")
        return {o: other + s[8:] for o, s in bs.items()}, sks

    total, server = run_round(ups, ws, params, graph, corrupt=corrupt)
    mean, total_wq = decode_mean(total, params.quant)
    assert np.abs(mean - _exact(ups, ws, nodes)).max() <= mean_error_bound(params.quant, 5, total_wq)
    assert "x-coordinate" in " ".join(server.log.notes[bad])


def test_too_many_corrupted_shares_skip_the_round_with_a_reason():
    params, graph = make_params(5)  # t = 3: three corrupted holders leave two good shares
    nodes = sorted(graph)
    ups, ws = _data(nodes)

    def corrupt(u, reply):
        bs, sks = reply
        return ({o: _flip_y(s) for o, s in bs.items()}, sks) if u in nodes[:3] else reply

    with pytest.raises(SecAggAbort, match="rebuild the secret it committed to"):
        run_round(ups, ws, params, graph, corrupt=corrupt)


def test_malformed_unmask_reply_shapes_do_not_raise_outside_the_protocol():
    params, graph = make_params(5)
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    total, server = run_round(ups, ws, params, graph, corrupt=lambda u, r: "garbage" if u == nodes[0] else r)
    assert "malformed" in " ".join(server.log.notes[nodes[0]])
    mean, total_wq = decode_mean(total, params.quant)
    assert np.abs(mean - _exact(ups, ws, nodes)).max() <= mean_error_bound(params.quant, 5, total_wq)


# ---- 5. poisoning bound ---------------------------------------------------------------------------------
def test_2_pow_28_added_to_one_masked_word_skips_the_round():
    # The setting: sites far below the weight cap (the default 50 000), so the summed weight is
    # ~1e6 and 2^28 in one word moved the global weights by hundreds.
    params, graph = make_params(4, weight_cap=50_000.0)
    nodes = sorted(graph)
    ups, ws = _data(nodes)

    def tamper(u, words):
        if u == nodes[1]:
            words[3] += np.uint32(1 << 28)

    with pytest.raises(SecAggAbort, match="outside what 4 honest uploads can give .coordinate 3 sums"):
        run_round(ups, ws, params, graph, tamper=tamper)


def test_in_range_tampering_moves_the_mean_at_most_r():
    # Sites near the cap: 2^28 stays inside the bound (no range proofs), but the decoded mean of every
    # coordinate is still within [-R, R], where before it had no bound at all.
    params, graph = make_params(4, weight_cap=100.0)
    nodes = sorted(graph)
    ups, ws = _data(nodes)

    def tamper(u, words):
        if u == nodes[1]:
            words[3] += np.uint32(1 << 28)

    total, _ = run_round(ups, ws, params, graph, tamper=tamper)
    mean, _ = decode_mean(total, params.quant)
    assert np.abs(mean).max() <= params.quant.value_range


def test_negative_weight_word_skips_the_round():
    params, graph = make_params(4)
    nodes = sorted(graph)
    ups, ws = _data(nodes)

    def tamper(u, words):
        if u == nodes[0]:
            words[-1] -= np.uint32(1 << 30)  # the weight word goes far below zero

    with pytest.raises(SecAggAbort, match="summed weight"):
        run_round(ups, ws, params, graph, tamper=tamper)


# ---- 6. re-prune after stage 1 -------------------------------------------------------------------------
def test_nodes_left_without_enough_share_holders_after_stage_1_are_pruned():
    params, graph = make_params(8, k=4)  # 4 neighbours, t = 3
    nodes = sorted(graph)
    victim = nodes[0]
    nb = graph[victim]
    ups, ws = _data(nodes)
    gone = set(nb[:3])  # three of its four neighbours never share keys: 1 + 1 < t holders are left
    fed = Federation(params, graph, 301)
    fed.setup()
    fed.share_keys(drop=gone)
    assert victim not in fed.server.shares
    assert "too few neighbours completed key sharing" in fed.server.log.dropped[victim][1]


# ---- 7. quantization settings that cost accuracy are named --------------------------------------------
def test_small_site_in_a_16_bit_ring_still_counts():
    from xr0_core.secagg.quantize import QuantSpec

    spec = QuantSpec(16, 2.0, 10)  # L = 3276
    assert spec.quantize_weight(10 / 50_000) == 1  # rint(0.66) would be 1 anyway; 1e-5 * L rounds to 0:
    assert spec.quantize_weight(1e-5) == 1 and spec.quantize_weight(0.0) == 0


def test_setting_warnings_name_clipping_noise_and_coarse_weights():
    from xr0_core.secagg.quantize import QuantSpec, clip_probability, setting_warnings

    assert clip_probability(2.0, 2.0) == pytest.approx(0.3173, abs=1e-3)  # the sigma C = 2, R = 2
    warns = setting_warnings(QuantSpec(16, 2.0, 10), 50_000.0, client_noise_std=2.0)
    assert any("31.7 % of coordinates clip" in w for w in warns)
    assert any("weights are rounded to multiples of" in w for w in warns)
    assert setting_warnings(QuantSpec(32, 8.0, 10), 50_000.0, client_noise_std=1.0) == []


def test_a_bad_ciphertext_excludes_its_sender_not_its_receivers():
    params, graph = make_params(6)  # all-to-all, t = 4
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    bad = nodes[2]

    def deliver(dst, shares):  # bad's shares arrive corrupted at every receiver
        return {src: (ct[:-1] + bytes([ct[-1] ^ 1]) if src == bad else ct) for src, ct in shares.items()}

    fed = Federation(params, graph, 301)
    fed.setup()
    fed.share_keys()
    fed.upload(ups, ws, deliver=deliver)
    assert bad not in fed.server.uploaded and len(fed.server.uploaded) == 5
    fed.consistency()
    total = fed.unmask()
    mean, total_wq = decode_mean(total, params.quant)
    survivors = [u for u in nodes if u != bad]
    assert np.abs(mean - _exact(ups, ws, survivors)).max() <= mean_error_bound(params.quant, 5, total_wq)


def test_a_site_refuses_a_view_that_counts_a_sender_it_rejected():
    params, graph = make_params(5)
    nodes = sorted(graph)
    ups, ws = _data(nodes)
    fed = Federation(params, graph, 301)
    fed.setup()
    fed.share_keys()
    u, bad = nodes[0], nodes[1]
    shares = fed.server.shares_for(u)
    shares[bad] = shares[bad][:-1] + bytes([shares[bad][-1] ^ 1])
    assert fed.sessions[u].receive_shares(shares) == [bad]
    fed.sessions[u].mask(ups[u], ws[u])
    u2 = sorted(fed.server.shares)
    with pytest.raises(SecAggError, match="rejected"):
        fed.sessions[u].consistency(u2, u2, fed.server.announced, fed.sign[u])  # a coordinator that kept bad's upload anyway
