"""Drive the pure SecAgg+ state objects for n clients, with optional dropouts at any stage."""

from __future__ import annotations

import os
import random

import numpy as np

from xr0_core.secagg import identity
from xr0_core.secagg.protocol import ClientRules, RoundParams, default_threshold, neighbour_graph
from xr0_core.secagg.server import ServerRound
from xr0_core.secagg.session import ClientSession
from xr0_core.secagg.quantize import QuantSpec

STAGES = ("setup", "share-keys", "masked-upload", "consistency", "unmask")


def make_params(n: int, *, threshold: int | None = None, bits: int = 32, value_range: float = 2.0,
                weight_cap: float = 100.0, round_: int = 1, k: int = 0,
                session: bytes = b"") -> tuple[RoundParams, dict]:
    nodes = [1000 + 7 * i for i in range(n)]
    graph = neighbour_graph(nodes, k, random.Random(0))
    holders = len(next(iter(graph.values()))) + 1
    t = threshold if threshold is not None else default_threshold(holders)
    return RoundParams("run-abc", round_, t, QuantSpec(bits, value_range, n), weight_cap,
                       session_id=session or os.urandom(16), run_id=1), graph


def signers(graph) -> dict[int, bytes]:
    """One long-term signing key per simulated hospital."""
    return {u: identity.generate_signing_key() for u in graph}


def pinned_rules(keys_: dict[int, bytes], **kw) -> ClientRules:
    return ClientRules(pinned=frozenset(identity.public_of(k) for k in keys_.values()), **kw)


class Federation:
    """Sessions + server of one round, stage by stage, so a test can play the coordinator between stages."""

    def __init__(self, params: RoundParams, graph: dict, size: int, rules: ClientRules | None = None,
                 sign: dict[int, bytes] | None = None) -> None:
        self.params, self.graph = params, graph
        self.sign = sign or signers(graph)
        self.rules = rules or pinned_rules(self.sign)
        self.server = ServerRound(params, graph, size)
        self.sessions = {u: ClientSession.start(params, u, graph, self.rules) for u in graph}

    def setup(self, drop=()):
        self.server.record_keys({u: s.announce(self.sign[u]) for u, s in self.sessions.items() if u not in drop})

    def share_keys(self, drop=()):
        replies, commits = {}, {}
        for u in self.server.keys:
            if u in drop:
                continue
            replies[u] = self.sessions[u].share_keys(self.server.peer_keys(u))
            commits[u] = self.sessions[u].b_commitment()
        self.server.record_shares(replies, commits)

    def upload(self, updates, weights, drop=(), record=None, tamper=None, deliver=None):
        """``deliver(dst, shares) -> shares`` lets a test play the network between stage 1 and 2."""
        got = {}
        for u in list(self.server.shares):
            if u in drop:
                continue
            incoming = self.server.shares_for(u)
            rejected = self.sessions[u].receive_shares(deliver(u, incoming) if deliver else incoming)
            up = self.sessions[u].mask(updates[u], weights[u])
            if tamper is not None:
                tamper(u, up.words)
            if record is not None:
                record.append(up.words.copy())
            got[u] = (up, rejected)
        excluded = self.server.excluded_by_rejections({u: r for u, (_, r) in got.items()})
        for u, (up, rejected) in got.items():
            if u not in excluded:
                self.server.add_upload(u, up.words, up.clipped, rejected)
        self.server.close_uploads()

    def consistency(self, drop=()):
        u2, u3 = self.server.view()
        sigs = {u: self.sessions[u].consistency(u2, u3, self.server.announced, self.sign[u])
                for u in self.server.uploaded if u not in drop}
        self.server.record_signatures(sigs)

    def unmask(self, drop=(), corrupt=None):
        replies = {}
        for u in self.server.uploaded:
            if u in drop:
                continue
            replies[u] = self.sessions[u].unmask(*self.server.unmask_request(u), self.server.signatures)
            if corrupt is not None:
                replies[u] = corrupt(u, replies[u])
        return self.server.finish(replies)


def run_round(updates: dict[int, np.ndarray], weights: dict[int, float], params: RoundParams, graph: dict,
              drop: dict[str, set[int]] | None = None, record: list | None = None, tamper=None, corrupt=None):
    """Returns (sum_words, server). ``drop[stage]`` = nodes that vanish before replying at that stage;
    ``tamper(node, words)`` edits a masked upload in place; ``corrupt(node, reply)`` replaces an unmask reply."""
    drop = drop or {}
    size = next(iter(updates.values())).size + 1
    fed = Federation(params, graph, size)
    fed.setup(drop.get("setup", ()))
    fed.share_keys(drop.get("share-keys", ()))
    fed.upload(updates, weights, drop.get("masked-upload", ()), record, tamper)
    fed.consistency(drop.get("consistency", ()))
    return fed.unmask(drop.get("unmask", ()), corrupt), fed.server
