"""A deviating coordinator with (at most) one colluding hospital, against the consistency round (issue 21,
rows 2-6): view partitions, signature replay across sessions, a second session of one round, substituted keys
without pinning, and a one-neighbour graph. Each attack is played to the end: the test then tries to compute
the victim's update from everything the coordinator holds (every individual masked upload, every share it was
given, the colluder's whole state) and fails, while the same recovery code does recover it from the victim's
real secrets (so the attempt is a real one)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from helpers import Federation, make_params, pinned_rules, signers
from xr0_core.secagg import identity, keys
from xr0_core.secagg.masks import apply_mask_inplace
from xr0_core.secagg.protocol import (ClientRules, SecAggError, _sign, b_commitment, consistency_quorum,
                                      neighbour_graph)
from xr0_core.secagg.quantize import decode_mean
from xr0_core.secagg.server import reconstruct
from xr0_core.secagg.session import ClientSession

P = 301  # parameters per update


def _data(nodes, seed=0):
    rng = np.random.default_rng(seed)
    return ({u: rng.normal(0, 0.2, P - 1).astype(np.float32) for u in nodes},
            {u: float(rng.integers(5, 90)) for u in nodes})


def _uploaded(n=5, k=0, seed=0, max_colluders=1, **kw):
    """Setup, share keys and uploads of one session; returns the federation and every individual upload."""
    params, graph = make_params(n, k=k, **kw)
    nodes = sorted(graph)
    ups, ws = _data(nodes, seed)
    sign = signers(graph)
    fed = Federation(params, graph, P, rules=pinned_rules(sign, max_colluders=max_colluders), sign=sign)
    fed.setup()
    fed.share_keys()
    uploads: dict[int, np.ndarray] = {}
    fed.upload(ups, ws, tamper=lambda u, w: uploads.__setitem__(u, w.copy()))
    return fed, nodes, ups, ws, uploads


def recover(fed: Federation, victim: int, b: bytes | None, s_private: bytes | None, upload: np.ndarray):
    """The victim's update from its individual upload, given its self-mask secret and its masking key
    (what the coordinator would rebuild from shares); None when either is missing."""
    if b is None or s_private is None:
        return None
    tag = fed.params.tag
    words = upload.copy()
    apply_mask_inplace(words, keys.self_mask_seed(b, tag, victim), -1)
    session = fed.sessions[victim]
    for v in sorted(session.received):
        seed = keys.pairwise_mask_seed(s_private, session.peer_s[v], tag, victim, v)
        apply_mask_inplace(words, seed, -_sign(victim, v))
    return decode_mean(words, fed.params.quant)[0]


def attempt(fed: Federation, victim: int, b_shares: list[bytes], s_shares: list[bytes], upload: np.ndarray):
    """Everything the coordinator can do with the shares it holds: rebuild the victim's secrets (checked
    against its commitment and public key, as the real server does) and unmask its individual upload."""
    t, tag = fed.params.threshold, fed.params.tag
    commit = fed.server.commits[victim]
    b = reconstruct(b_shares, t, lambda sec: b_commitment(sec, tag, victim) == commit) if len(b_shares) >= t else None
    s_pub = fed.server.keys[victim][1]

    def is_s(sec: bytes) -> bool:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        return X25519PrivateKey.from_private_bytes(sec).public_key().public_bytes_raw() == s_pub

    s = reconstruct(s_shares, t, is_s) if len(s_shares) >= t else None
    return recover(fed, victim, b, s, upload)


def _truth(ups, ws, u, quant):
    return np.clip(ups[u], -quant.value_range, quant.value_range)


def test_the_recovery_code_recovers_the_victim_from_its_real_secrets():
    fed, nodes, ups, ws, uploads = _uploaded()
    victim = nodes[0]
    got = recover(fed, victim, fed.sessions[victim].b, fed.sessions[victim].s.private, uploads[victim])
    assert np.abs(got - _truth(ups, ws, victim, fed.params.quant)).max() < 1e-6


def test_quorum_bound_two_views_cannot_both_reach_it():
    # Two signer sets of size q drawn from P pinned hospitals share at least 2q - P; the quorum makes that more
    # than c, so some honest hospital would have signed two transcripts of one round (it never does).
    for population in range(1, 13):
        for colluders in range(0, population):
            q = consistency_quorum(population, colluders)
            worst = min(len(set(a) & set(b)) for a, b in itertools.product(
                itertools.combinations(range(population), q), repeat=2)) if population <= 8 else 2 * q - population
            assert worst > colluders, (population, colluders, q)
            assert q <= population
    assert consistency_quorum(5, 1) == 4 and consistency_quorum(3, 1) == 3 and consistency_quorum(10, 1) == 6


def _partition(fed, nodes, colluder, view_a, view_b):
    """The coordinator shows U3 = ``view_a`` to its honest members and ``view_b`` to its honest members;
    the colluder signs both. Returns each honest site's unmask result (or the refusal) and what it released."""
    u2 = sorted(fed.server.shares)
    announced = fed.server.announced
    sig = {}
    refusals = []
    for view in (view_a, view_b):
        for u in view:
            if u == colluder:
                continue
            try:
                sig[(u, tuple(view))] = fed.sessions[u].consistency(u2, sorted(view), announced, fed.sign[u])
            except SecAggError as exc:  # e.g. a split or too small view: refused before signing
                refusals.append(str(exc))
    # the colluder's signature over each view's transcript (it has its signing key: it signs anything)
    released_b: dict[int, list[bytes]] = {u: [] for u in nodes}
    released_s: dict[int, list[bytes]] = {u: [] for u in nodes}
    for view in (view_a, view_b):
        members = sorted(view)
        honest = [u for u in members if u != colluder and (u, tuple(view)) in sig]
        if not honest:
            continue
        digest = fed.sessions[honest[0]].transcript
        bundle = {u: (identity.public_of(fed.sign[u]), sig[(u, tuple(view))]) for u in honest}
        bundle[colluder] = (identity.public_of(fed.sign[colluder]),
                            identity.sign(fed.sign[colluder], identity.view_message(digest, colluder)))
        for u in honest:
            session = fed.sessions[u]
            peers = set(session.received)
            alive = sorted((peers & set(members)) | {u})
            dropped = sorted(peers - set(members))
            try:
                b_sh, s_sh = session.unmask(alive, dropped, bundle)
            except SecAggError as exc:
                refusals.append(str(exc))
                continue
            for owner, share in b_sh.items():
                released_b[owner].append(share)
            for owner, share in s_sh.items():
                released_s[owner].append(share)
    # the colluder hands over its own shares of everyone
    col = fed.sessions[colluder]
    for owner, (b_share, s_share) in col.received.items():
        released_b[owner].append(b_share)
        released_s[owner].append(s_share)
    return refusals, released_b, released_s


def test_view_partition_with_one_colluder_recovers_nothing():
    """The audit's attack: n = 5, t = 3; {victim, h1, colluder} and {h2, h3, colluder} are each connected,
    each >= t and each signed by all its members. Every honest hospital refuses (3 < the quorum 4 of 5
    pinned), and no honest update is computable from what the coordinator holds."""
    fed, nodes, ups, ws, uploads = _uploaded()
    assert fed.params.threshold == 3
    victim, h1, h2, h3, colluder = nodes
    refusals, released_b, released_s = _partition(fed, nodes, colluder, [victim, h1, colluder], [h2, h3, colluder])
    assert len(refusals) == 4 and all("this site needs 4" in r for r in refusals)
    for u in (victim, h1, h2, h3):
        assert attempt(fed, u, released_b[u], released_s[u], uploads[u]) is None


def test_the_partition_works_with_a_quorum_below_the_bound():
    """Control: a site that assumed no colluder (quorum 3 of 5, a plain majority) releases its shares in the
    same attack, and the coordinator then recovers every honest update: the bound is what stops it."""
    fed, nodes, ups, ws, uploads = _uploaded(max_colluders=0)
    victim, h1, h2, h3, colluder = nodes
    refusals, released_b, released_s = _partition(fed, nodes, colluder, [victim, h1, colluder], [h2, h3, colluder])
    assert refusals == []
    for u in (victim, h1, h2, h3):
        got = attempt(fed, u, released_b[u], released_s[u], uploads[u])
        assert got is not None and np.abs(got - _truth(ups, ws, u, fed.params.quant)).max() < 1e-6


def test_ring_of_degree_two_partition_recovers_nothing():
    fed, nodes, ups, ws, uploads = _uploaded(n=6, k=2, seed=3)
    victim = nodes[0]
    neigh = fed.graph[victim]
    colluder, honest_neighbour = neigh[0], neigh[1]
    # view A: the victim and the colluder alive; view B: the victim "dropped", shown to its honest neighbour
    others = [u for u in nodes if u not in (victim, colluder, honest_neighbour)]
    view_a = [victim, colluder] + [u for u in others if u in fed.graph[colluder]]
    view_b = [u for u in nodes if u != victim]
    refusals, released_b, released_s = _partition(fed, nodes, colluder, view_a, view_b)
    assert refusals  # the honest sites refuse: neither view reaches the quorum of 6 pinned hospitals
    assert attempt(fed, victim, released_b[victim], released_s[victim], uploads[victim]) is None


def test_a_consistency_signature_from_another_session_of_the_round_does_not_verify():
    fed, nodes, ups, ws, uploads = _uploaded()
    fed.consistency()
    old = dict(fed.server.signatures)
    # Session 2 of the same round (new session id and keys): the same hospitals, the same survivor lists.
    params2 = type(fed.params)(fed.params.run_key, fed.params.server_round, fed.params.threshold, fed.params.quant,
                               fed.params.weight_cap, session_id=os.urandom(16), run_id=fed.params.run_id)
    fed2 = Federation(params2, fed.graph, P, sign=fed.sign)
    fed2.setup()
    fed2.share_keys()
    uploads2: dict[int, np.ndarray] = {}
    fed2.upload(ups, ws, tamper=lambda u, w: uploads2.__setitem__(u, w.copy()))
    u2, u3 = fed2.server.view()
    victim = nodes[0]
    fed2.sessions[victim].consistency(u2, u3, fed2.server.announced, fed2.sign[victim])
    digest2 = fed2.sessions[victim].transcript
    assert not any(identity.verify(k, identity.view_message(digest2, v), s) for v, (k, s) in old.items())
    with pytest.raises(SecAggError, match="did not sign the transcript|under another key"):
        fed2.sessions[victim].unmask(*fed2.server.unmask_request(victim), old)


def test_min_degree_two_refuses_the_one_neighbour_graph():
    # With one neighbour (the colluder), the victim's single pairwise mask is the colluder's own and its self
    # mask needs t = 2 of 2 shares (its own, released while "alive", and the colluder's): exposed without any
    # partition. The default min-degree refuses such a graph at setup, before any secret exists.
    params, graph = make_params(5)
    nodes = sorted(graph)
    victim, colluder = nodes[0], nodes[1]
    one = {u: tuple(v for v in graph[u] if u != victim and v != victim) for u in nodes}
    one[victim], one[colluder] = (colluder,), tuple(sorted(set(one[colluder]) | {victim}))
    params2 = type(params)(params.run_key, 1, 2, params.quant, params.weight_cap, session_id=params.session_id,
                           run_id=1)
    with pytest.raises(SecAggError, match="min-degree"):
        ClientSession.start(params2, victim, one, pinned_rules(signers(graph)))
    # a two-hospital federation (one pinned peer) has degree 1 and is accepted (rules from the auto default)
    from client.secagg import rules_from_policy
    from xr0_core.site.policy import SitePolicy

    two = neighbour_graph(nodes[:2], 0, __import__("random").Random(0))
    keys2 = signers(two)
    rules = rules_from_policy(SitePolicy(), frozenset(identity.public_of(k) for k in keys2.values()))
    assert rules.min_degree == 1
    ClientSession.start(type(params)(params.run_key, 1, 2, params.quant, params.weight_cap,
                                     session_id=params.session_id, run_id=1), nodes[0], two, rules)


def test_substituted_key_without_pinning_is_refused_at_the_site(tmp_path):
    """Unpinned in deployment: the site refuses secure aggregation outright (the audit's coordinator could
    substitute a neighbour's key and read the victim's shares); so no share of the victim ever exists."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.secagg import make_handlers
    from xr0_core.secagg.wire import REC, graph_to_flat
    from xr0_core.site.policy import SitePolicy, policy_path, save_policy

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    data, state = tmp_path / "data" / "mhh", tmp_path / "state"
    data.mkdir(parents=True)
    save_policy(SitePolicy(), policy_path(state))
    params, graph = make_params(3)
    node = sorted(graph)[0]
    ctx = Context(run_id=1, node_id=node, node_config={"data-path": str(data), "state-dir": str(state)},
                  state=RecordDict(), run_config={})
    msg = Message(RecordDict({REC: ConfigRecord({**params.to_flat(), **graph_to_flat(graph)})}), dst_node_id=node,
                  message_type="query.secagg_setup", group_id="1")
    setup = make_handlers(lambda m, c: m)["secagg_setup"]
    with pytest.raises(Exception, match="secagg.peer-keys"):
        setup(msg, ctx)
    assert "xr0-secagg" not in ctx.state.config_records  # no session, no secret was made
