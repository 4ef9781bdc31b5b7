"""SecAgg+ round state for both sides, as pure objects (no Flower): what a client keeps between stages
and what the coordinator computes from the replies.

Stages (Bell et al. 2020, §3, with the consistency round of Bonawitz et al. 2017 for a coordinator that
may deviate; the message plumbing lives in ``client/secagg.py`` / ``strategies/secagg.py``):

0. **setup** - the server fixes the round (run key, round, threshold t, ring, weight cap) and a random
   k-regular neighbour graph; each client checks t and its degree against its site policy
   (:class:`ClientRules`), draws fresh X25519 pairs ``c`` and ``s`` and returns the publics signed with its
   long-term signing key (:mod:`.identity`).
1. **share keys** - each client verifies its neighbours' signed keys (pinned, distinct), draws its
   self-mask secret ``b``, and Shamir-splits ``b`` and ``s.private`` t-out-of-(its alive neighbours +
   itself); each share goes to its holder encrypted and authenticated (:mod:`.keys`), routed by the server
   which cannot read it; the server also gets a commitment to ``b``. The server then re-prunes nodes left
   with fewer than t - 1 neighbours that shared keys.
2. **masked upload** - each client decrypts the shares addressed to it (at least t - 1, or it refuses),
   trains, quantizes its weighted update (:mod:`.quantize`) and adds its self mask and one pairwise mask per
   neighbour whose share arrived (+ when its id is the smaller one, - otherwise), so pairwise masks cancel.
3a. **consistency** - the server skips a round whose uploaders' graph is split; each uploader checks the
   lists (U2 shared keys, U3 uploaded) against what it saw, checks U3 is connected, and signs them.
3b. **unmask** - with every uploader's signature over the same lists, for each neighbour in U3 the client
   returns its share of ``b``; for each one not in U3, its share of ``s.private``. Never both for one node,
   never a second request. The server rebuilds each secret from some t shares that match its commitment /
   public key, removes the masks, and range-checks the sum (:func:`.quantize.check_sum`).

Code: the shared definitions here; the client's side in :mod:`.session` (:class:`ClientSession`), the
coordinator's in :mod:`.server` (:class:`ServerRound`).

Threat model: a coordinator that may deviate, hospitals that may send garbage; see
docs/secure-aggregation.md for what holds and what does not (pinned signing keys, no range proofs).
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass

import numpy as np

from . import identity, keys
from .quantize import QuantSpec

SECRET_BYTES = 32


class SecAggError(RuntimeError):
    """A protocol step that cannot proceed safely; the message says what went wrong."""


class SecAggAbort(SecAggError):
    """The server cannot finish the round (too few survivors / shares); the global model must not move."""


def default_threshold(num_holders: int) -> int:
    """Strict majority of a client's share holders (its neighbours + itself), at least 2.

    A majority means two disjoint groups of honest holders can never both reach t, so one client's ``b``
    and ``s.private`` cannot both be rebuilt even by a server that lies about who dropped.
    """
    return max(2, num_holders // 2 + 1)


def neighbour_graph(nodes: list[int], num_neighbours: int, rng: random.Random) -> dict[int, tuple[int, ...]]:
    """Undirected k-regular graph: a random ring order, each node linked to k/2 nodes on each side.

    Parameters
    ----------
    nodes : list of int
        Node ids of the round (at least 2).
    num_neighbours : int
        k; 0 or ``>= len(nodes) - 1`` means everyone (SecAgg). Odd k is rounded up to even.
    rng : random.Random
        The server passes ``random.SystemRandom()`` (an unpredictable placement); tests pass a seeded one.
    """
    if len(nodes) < 2:
        raise SecAggError("secure aggregation needs at least 2 clients in a round")
    n = len(nodes)
    k = n - 1 if num_neighbours <= 0 else min(n - 1, num_neighbours + (num_neighbours % 2))
    if k >= n - 1:
        return {u: tuple(sorted(v for v in nodes if v != u)) for u in nodes}
    order = list(nodes)
    rng.shuffle(order)
    graph: dict[int, set[int]] = {u: set() for u in nodes}
    for i, u in enumerate(order):
        for d in range(1, k // 2 + 1):
            v = order[(i + d) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: tuple(sorted(vs)) for u, vs in graph.items()}


@dataclass(frozen=True)
class RoundParams:
    """Public parameters of one secure-aggregation session, identical at every client (the setup message).

    ``session_id``: fresh random bytes the coordinator draws for each session; ``run_id``: Flower's run id.
    Both go into :attr:`tag`, so keys, shares and signatures of one session are worthless in any other.
    """

    run_key: str
    server_round: int
    threshold: int
    quant: QuantSpec
    weight_cap: float  # a client's weight fraction is min(1, num-examples / weight_cap)
    session_id: bytes = b""
    run_id: int = 0

    @property
    def tag(self) -> bytes:
        return keys.round_tag(self.run_key, self.server_round, self.session_id, self.run_id)

    def to_flat(self) -> dict:
        return {"run-key": self.run_key, "round": self.server_round, "threshold": self.threshold,
                "bits": self.quant.bits, "range": self.quant.value_range, "max-clients": self.quant.max_clients,
                "weight-cap": self.weight_cap, "session-id": self.session_id, "run-id": self.run_id}

    def encoded(self) -> bytes:
        """The parameters every signer of the transcript must have seen, canonically encoded."""
        return struct.pack(">IIdId", self.threshold, self.quant.bits, float(self.quant.value_range),
                           self.quant.max_clients, float(self.weight_cap))

    @classmethod
    def from_flat(cls, d) -> "RoundParams":
        try:
            session = d["session-id"] if "session-id" in d else b""
            if not isinstance(session, bytes):
                raise SecAggError("the secure-aggregation session id must be bytes")
            return cls(str(d["run-key"]), int(d["round"]), int(d["threshold"]),
                       QuantSpec(int(d["bits"]), float(d["range"]), int(d["max-clients"])), float(d["weight-cap"]),
                       session, int(d["run-id"]) if "run-id" in d else 0)
        except KeyError as exc:
            raise SecAggError(f"secure-aggregation setup lacks {exc.args[0]!r}") from None


MIN_SESSION_BYTES = 16  # a site refuses a session id shorter than this (it would let sessions collide)


def consistency_quorum(population: int, max_colluders: int) -> int:
    """Signatures over one transcript a site needs before it releases any share.

    ``population`` P: the hospitals whose signatures count (the site's pinned keys, itself included);
    ``max_colluders`` c: hospitals that may sign every view the coordinator shows them. Two different views
    signed by ``q`` each share at least ``2q - P`` signers; with ``q = floor((P + c) / 2) + 1`` that is more
    than ``c``, so at least one honest hospital would have signed two transcripts of one round, which it never
    does (it uploads, hence signs, once per round). So no two views of one round can both reach ``q``.

    Returns
    -------
    int
        ``min(P, floor((P + c) / 2) + 1)``.
    """
    return min(population, (population + max_colluders) // 2 + 1)


def _sign(me: int, peer: int) -> int:
    return 1 if me < peer else -1


def is_connected(nodes, graph: dict[int, tuple[int, ...]]) -> bool:
    """Whether ``nodes`` induce a connected subgraph of ``graph`` (no node: not connected)."""
    return len(components(nodes, graph)) == 1


def components(nodes, graph: dict[int, tuple[int, ...]]) -> list[list[int]]:
    """Connected components of the subgraph ``nodes`` induce, each sorted."""
    left, out = set(nodes), []
    while left:
        start = min(left)
        seen, todo = {start}, [start]
        while todo:
            u = todo.pop()
            for v in graph.get(u, ()):
                if v in left and v not in seen:
                    seen.add(v)
                    todo.append(v)
        out.append(sorted(seen))
        left -= seen
    return out


def check_graph(graph: dict[int, tuple[int, ...]]) -> None:
    """Refuse a neighbour graph that is not undirected and loop-free (a client checks the one it is shown)."""
    for u, vs in graph.items():
        for v in vs:
            if v == u or v not in graph or u not in graph[v]:
                raise SecAggError("the neighbour graph the coordinator sent is not symmetric; refusing")


def b_commitment(b: bytes, tag: bytes, node: int) -> bytes:
    """SHA-256 commitment to a self-mask secret: lets the server tell a correct reconstruction from one
    made with a corrupted share (b is 256 uniform bits, so the hash reveals nothing usable)."""
    return hashlib.sha256(keys.PROTOCOL + b"|b-commit|" + tag + struct.pack(">Q", node) + b).digest()


@dataclass(frozen=True)
class ClientRules:
    """What a site insists on, from its site policy (``[secagg]``): refused otherwise, before any secret moves.

    ``pinned``: the signing keys this site accepts for peers (None: any key; then the checks below bind
    nothing to hospitals and hold against an honest-but-curious coordinator only).
    """

    min_threshold: int = 2
    min_degree: int = 2
    pinned: frozenset[bytes] | None = None
    max_colluders: int = 1  # hospitals that may sign any view (consistency_quorum)


@dataclass(frozen=True)
class PeerKeys:
    """A site's announcement at setup: round keys ``c``, ``s``, its signing key and signature over both."""

    c: bytes
    s: bytes
    sign: bytes
    sig: bytes

    def valid(self, tag: bytes, node: int) -> bool:
        return all(isinstance(x, bytes) for x in (self.c, self.s, self.sign, self.sig)) and identity.verify(
            self.sign, identity.key_message(tag, node, self.c, self.s), self.sig)


@dataclass
class MaskedUpload:
    words: np.ndarray  # [P + 1] ring words: masked update then masked weight
    clipped: int  # coordinates clipped to the declared range
    weight_capped: bool  # num-examples exceeded the weight cap
    npy: bytes = b""  # the .npy image of words, what the site sends (words is then a read-only view of it)
