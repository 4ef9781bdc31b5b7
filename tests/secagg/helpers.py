"""Drive the pure SecAgg+ state objects for n clients, with optional dropouts at any stage."""

from __future__ import annotations

import random

import numpy as np

from xr0_core.secagg.protocol import ClientSession, RoundParams, ServerRound, neighbour_graph, default_threshold
from xr0_core.secagg.quantize import QuantSpec


def make_params(n: int, *, threshold: int | None = None, bits: int = 32, value_range: float = 2.0,
                weight_cap: float = 100.0, round_: int = 1, k: int = 0) -> tuple[RoundParams, dict]:
    nodes = [1000 + 7 * i for i in range(n)]
    graph = neighbour_graph(nodes, k, random.Random(0))
    holders = len(next(iter(graph.values()))) + 1
    t = threshold if threshold is not None else default_threshold(holders)
    return RoundParams("run-abc", round_, t, QuantSpec(bits, value_range, n), weight_cap), graph


def run_round(updates: dict[int, np.ndarray], weights: dict[int, float], params: RoundParams, graph: dict,
              drop: dict[str, set[int]] | None = None, record: list | None = None):
    """Returns (sum_words, server). ``drop[stage]`` = nodes that vanish before replying at that stage."""
    drop = drop or {}
    size = next(iter(updates.values())).size + 1
    server = ServerRound(params, graph, size)
    sessions = {u: ClientSession.start(params, u, list(graph[u])) for u in graph}
    server.record_keys({u: s.public_keys() for u, s in sessions.items() if u not in drop.get("setup", set())})
    replies = {}
    for u in server.keys:
        if u in drop.get("share-keys", set()):
            continue
        replies[u] = sessions[u].share_keys(server.peer_keys(u))
    server.record_shares(replies)
    for u in list(server.shares):
        if u in drop.get("masked-upload", set()):
            continue
        sessions[u].receive_shares(server.shares_for(u))
        up = sessions[u].mask(updates[u], weights[u])
        if record is not None:
            record.append(up.words.copy())
        server.add_upload(u, up.words, up.clipped)
    server.close_uploads()
    unmask = {}
    for u in server.uploaded:
        if u in drop.get("unmask", set()):
            continue
        unmask[u] = sessions[u].unmask(*server.unmask_request(u))
    return server.finish(unmask), server
