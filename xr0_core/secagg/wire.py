"""Names shared by the client and server stages (message actions, record and metric keys).

Message types are ``<category>.<action>`` as Flower's ClientApp routes them: ``query.secagg_setup`` goes to
``@app.query("secagg_setup")`` (actions must be Python identifiers), ``train.secagg`` to ``@app.train("secagg")``.
"""

SETUP = "secagg_setup"  # query action: fresh key pairs -> public keys
SHARE_KEYS = "secagg_share_keys"  # query action: neighbours' keys -> encrypted shares
TRAIN_ACTION = "secagg"  # train action: train + masked upload
CONSISTENCY = "secagg_consistency"  # query action: survivor lists -> the site's signature over them
UNMASK = "secagg_unmask"  # query action: alive / dropped + every uploader's signature -> shares

REC = "secagg"  # ConfigRecord with the stage's protocol fields (both directions)
MASKED = "secagg-masked"  # ArrayRecord holding the masked upload as one uint array "words"
WORDS = "words"
CLIPPED = "secagg-clipped"  # metric: coordinates clipped to the declared range
WEIGHT_CAPPED = "secagg-weight-capped"  # kept at the site (logged there): it says num-examples > weight-cap
PINNED = "secagg-pinned"  # per-site metric at the coordinator: how many peer signing keys the site pinned (0: none)


def graph_to_flat(graph: dict[int, tuple[int, ...]]) -> dict:
    """The neighbour graph as ConfigRecord lists: nodes and the edge list (u < v)."""
    edges = [(u, v) for u in sorted(graph) for v in graph[u] if u < v]
    return {"graph-nodes": sorted(graph), "edge-a": [u for u, _ in edges], "edge-b": [v for _, v in edges]}


def graph_from_flat(rec) -> dict[int, tuple[int, ...]]:
    adj: dict[int, set[int]] = {int(u): set() for u in rec["graph-nodes"]}
    for a, b in zip(rec.get("edge-a", []), rec.get("edge-b", [])):
        a, b = int(a), int(b)
        if a not in adj or b not in adj or a == b:
            raise ValueError("the neighbour graph names a node outside the round")
        adj[a].add(b)
        adj[b].add(a)
    return {u: tuple(sorted(vs)) for u, vs in adj.items()}
