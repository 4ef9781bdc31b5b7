"""SecAgg+ round state for both sides, as pure objects (no Flower): what a client keeps between stages
and what the coordinator computes from the replies.

Stages (Bell et al. 2020, §3; the message plumbing lives in ``client/secagg.py`` / ``strategies/secagg.py``):

0. **setup** - the server fixes the round (run key, round, threshold t, ring, weight cap) and a random
   k-regular neighbour graph; each client draws fresh X25519 pairs ``c`` and ``s`` and returns the publics.
1. **share keys** - each client learns its neighbours' publics, draws its self-mask secret ``b``, and
   Shamir-splits ``b`` and ``s.private`` t-out-of-(its alive neighbours + itself); each share goes to its
   holder encrypted and authenticated (:mod:`.keys`), routed by the server which cannot read it.
2. **masked upload** - each client decrypts the shares addressed to it, trains, quantizes its weighted
   update (:mod:`.quantize`) and adds its self mask and one pairwise mask per neighbour that reached stage 1
   (+ when its id is the smaller one, - otherwise), so pairwise masks cancel in the sum.
3. **unmask** - for each neighbour the server reports as alive the client returns its share of ``b``; for
   each one reported dropped, its share of ``s.private``. Never both for one neighbour: a client refuses a
   request that would reveal both, and a second request in the same round. The server rebuilds the self
   masks of the uploaders and the pairwise masks they shared with the dropped, and removes them.

Threat model: honest-but-curious server; see docs/secure-aggregation.md.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import keys, shamir
from .masks import apply_mask_inplace
from .quantize import QuantSpec, quantize

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
    """Public parameters of one round, identical at every client (sent in the setup message)."""

    run_key: str
    server_round: int
    threshold: int
    quant: QuantSpec
    weight_cap: float  # a client's weight fraction is min(1, num-examples / weight_cap)

    @property
    def tag(self) -> bytes:
        return keys.round_tag(self.run_key, self.server_round)

    def to_flat(self) -> dict:
        return {"run-key": self.run_key, "round": self.server_round, "threshold": self.threshold,
                "bits": self.quant.bits, "range": self.quant.value_range, "max-clients": self.quant.max_clients,
                "weight-cap": self.weight_cap}

    @classmethod
    def from_flat(cls, d) -> "RoundParams":
        try:
            return cls(str(d["run-key"]), int(d["round"]), int(d["threshold"]),
                       QuantSpec(int(d["bits"]), float(d["range"]), int(d["max-clients"])), float(d["weight-cap"]))
        except KeyError as exc:
            raise SecAggError(f"secure-aggregation setup lacks {exc.args[0]!r}") from None


def _sign(me: int, peer: int) -> int:
    return 1 if me < peer else -1


@dataclass
class MaskedUpload:
    words: np.ndarray  # [P + 1] ring words: masked update then masked weight
    clipped: int  # coordinates clipped to the declared range
    weight_capped: bool  # num-examples exceeded the weight cap


@dataclass
class ClientSession:
    """One client's secrets and progress for one round. Lives only in the client's memory /
    ``context.state``; :meth:`to_bytes` exists for that and nothing else (never log or send it)."""

    params: RoundParams
    node: int
    neighbours: tuple[int, ...]
    c: keys.KeyPair
    s: keys.KeyPair
    stage: str = "setup"  # setup -> shared -> received -> masked -> done
    b: bytes = b""
    peer_c: dict[int, bytes] = field(default_factory=dict)
    peer_s: dict[int, bytes] = field(default_factory=dict)
    own_b_share: bytes = b""
    own_sk_share: bytes = b""
    received: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # src -> (b share, sk share)

    # ---- stage 0 ------------------------------------------------------------------------------------
    @classmethod
    def start(cls, params: RoundParams, node: int, neighbours: list[int]) -> "ClientSession":
        if node in neighbours:
            raise SecAggError("a client cannot be its own neighbour")
        return cls(params, node, tuple(sorted(neighbours)), keys.KeyPair.generate(), keys.KeyPair.generate())

    def public_keys(self) -> tuple[bytes, bytes]:
        return self.c.public, self.s.public

    # ---- stage 1 ------------------------------------------------------------------------------------
    def share_keys(self, peers: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Encrypted shares for every alive neighbour, from their ``(c public, s public)`` keys."""
        self._expect("setup")
        unknown = set(peers) - set(self.neighbours)
        if unknown:
            raise SecAggError(f"the server sent keys of nodes {sorted(unknown)} that are not neighbours")
        holders = sorted(set(peers) | {self.node})
        if len(holders) < self.params.threshold:
            raise SecAggError(f"{len(holders)} share holders < threshold {self.params.threshold}")
        self.peer_c = {v: pk[0] for v, pk in peers.items()}
        self.peer_s = {v: pk[1] for v, pk in peers.items()}
        self.b = os.urandom(SECRET_BYTES)
        b_shares = shamir.split(self.b, self.params.threshold, holders)
        sk_shares = shamir.split(self.s.private, self.params.threshold, holders)
        self.own_b_share, self.own_sk_share = b_shares[self.node], sk_shares[self.node]
        tag = self.params.tag
        out = {
            v: keys.encrypt_share(self.c.private, self.peer_c[v], tag, self.node, v, b_shares[v] + sk_shares[v])
            for v in holders if v != self.node
        }
        self.stage = "shared"
        return out

    # ---- stage 2 ------------------------------------------------------------------------------------
    def receive_shares(self, ciphertexts: dict[int, bytes]) -> None:
        """Decrypt and keep the shares neighbours sent; their senders are this round's mask peers.

        Raises :class:`keys.ShareRejected` if any share is not authentic (the client then drops out of the
        round rather than mask against a peer it cannot vouch for).
        """
        self._expect("shared")
        tag = self.params.tag
        received: dict[int, tuple[bytes, bytes]] = {}
        for src, blob in ciphertexts.items():
            if src not in self.peer_c:
                raise SecAggError(f"a share from node {src}, which was not a neighbour at stage 1")
            plain = keys.decrypt_share(self.c.private, self.peer_c[src], tag, src, self.node, blob)
            if len(plain) != 2 * shamir.SHARE_BYTES:
                raise keys.ShareRejected(f"share from node {src} has the wrong length")
            received[src] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        self.received = received
        self.stage = "received"

    def mask(self, update: np.ndarray, num_examples: float) -> MaskedUpload:
        """Quantize ``update`` (flat, [P]) weighted by ``num_examples`` and add all masks."""
        self._expect("received")
        if not num_examples > 0:
            raise SecAggError(f"num-examples must be positive, got {num_examples}")
        fraction = min(1.0, float(num_examples) / self.params.weight_cap)
        spec = self.params.quant
        words, clipped = quantize(update, spec.quantize_weight(fraction), spec)
        tag = self.params.tag
        apply_mask_inplace(words, keys.self_mask_seed(self.b, tag, self.node), +1)
        for v in sorted(self.received):
            seed = keys.pairwise_mask_seed(self.s.private, self.peer_s[v], tag, self.node, v)
            apply_mask_inplace(words, seed, _sign(self.node, v))
        self.stage = "masked"
        return MaskedUpload(words, clipped, num_examples > self.params.weight_cap)

    # ---- stage 3 ------------------------------------------------------------------------------------
    def unmask(self, alive: list[int], dropped: list[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Shares of ``b`` for ``alive`` nodes and of ``s.private`` for ``dropped`` ones.

        Refuses (SecAggError) a request that names a node in both lists, a node that was not a mask peer,
        fewer than t alive holders, or a second request in the same round.
        """
        self._expect("masked")
        self.stage = "done"  # whatever happens below, no second request is served this round
        alive_s, dropped_s = set(alive), set(dropped)
        peers = set(self.received)
        if alive_s & dropped_s:
            raise SecAggError("the server asked for both shares of one node; refusing")
        if self.node not in alive_s or not (alive_s - {self.node}) <= peers or not dropped_s <= peers:
            raise SecAggError("the unmask request names nodes that were not this client's mask peers")
        if len(alive_s) < self.params.threshold:
            raise SecAggError(f"only {len(alive_s)} uploads survive < threshold {self.params.threshold}; refusing")
        b_shares = {v: (self.own_b_share if v == self.node else self.received[v][0]) for v in sorted(alive_s)}
        sk_shares = {v: self.received[v][1] for v in sorted(dropped_s)}
        return b_shares, sk_shares

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"secure-aggregation message out of order: expected stage {stage!r}, at {self.stage!r}")

    # ---- storage in context.state ------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        h = bytes.hex
        d = {
            "params": self.params.to_flat(), "node": self.node, "neighbours": list(self.neighbours),
            "c": [h(self.c.private), h(self.c.public)], "s": [h(self.s.private), h(self.s.public)],
            "stage": self.stage, "b": h(self.b),
            "peer_c": {str(k): h(v) for k, v in self.peer_c.items()},
            "peer_s": {str(k): h(v) for k, v in self.peer_s.items()},
            "own": [h(self.own_b_share), h(self.own_sk_share)],
            "received": {str(k): [h(a), h(b)] for k, (a, b) in self.received.items()},
        }
        return json.dumps(d).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ClientSession":
        d = json.loads(blob.decode())
        u = bytes.fromhex
        return cls(
            params=RoundParams.from_flat(d["params"]), node=int(d["node"]), neighbours=tuple(d["neighbours"]),
            c=keys.KeyPair(u(d["c"][0]), u(d["c"][1])), s=keys.KeyPair(u(d["s"][0]), u(d["s"][1])),
            stage=d["stage"], b=u(d["b"]),
            peer_c={int(k): u(v) for k, v in d["peer_c"].items()},
            peer_s={int(k): u(v) for k, v in d["peer_s"].items()},
            own_b_share=u(d["own"][0]), own_sk_share=u(d["own"][1]),
            received={int(k): (u(a), u(b)) for k, (a, b) in d["received"].items()},
        )


@dataclass
class StageLog:
    """Which nodes left the round at which stage, with the reason (for the round's report)."""

    dropped: dict[int, tuple[str, str]] = field(default_factory=dict)  # node -> (stage, reason)

    def drop(self, node: int, stage: str, reason: str) -> None:
        self.dropped.setdefault(node, (stage, reason))


class ServerRound:
    """The coordinator's side of one round: who is still in, what to send each client, and the unmasking.

    Parameters
    ----------
    params : RoundParams
    graph : dict node -> neighbours
        From :func:`neighbour_graph` over the round's nodes.
    num_words : int
        P + 1: length of every masked upload.
    """

    def __init__(self, params: RoundParams, graph: dict[int, tuple[int, ...]], num_words: int) -> None:
        self.params = params
        self.graph = graph
        self.num_words = num_words
        self.log = StageLog()
        self.keys: dict[int, tuple[bytes, bytes]] = {}  # U1: node -> (c public, s public)
        self.shares: dict[int, dict[int, bytes]] = {}  # U2: src -> {dst: ciphertext}
        self._sum: np.ndarray | None = None
        self.uploaded: list[int] = []  # U3
        self.clipped = 0

    @property
    def nodes(self) -> list[int]:
        return sorted(self.graph)

    def _require(self, alive: list[int], stage: str) -> None:
        if len(alive) < max(2, self.params.threshold):
            raise SecAggAbort(
                f"only {len(alive)} of {len(self.graph)} clients left after {stage} (threshold "
                f"{self.params.threshold}); the round is skipped and the global weights are unchanged"
            )

    # ---- stage 0 -> 1 --------------------------------------------------------------------------------
    def record_keys(self, replies: dict[int, tuple[bytes, bytes]]) -> None:
        for node in self.nodes:
            if node not in replies:
                self.log.drop(node, "setup", "no reply")
        alive = {n: pk for n, pk in replies.items() if n in self.graph}
        # A client whose alive neighbourhood (plus itself) is below t could never have its secrets rebuilt.
        changed = True
        while changed:
            changed = False
            for node in list(alive):
                if len([v for v in self.graph[node] if v in alive]) + 1 < self.params.threshold:
                    del alive[node]
                    self.log.drop(node, "setup", "too few neighbours alive to hold its shares")
                    changed = True
        self.keys = alive
        self._require(sorted(alive), "setup")

    def peer_keys(self, node: int) -> dict[int, tuple[bytes, bytes]]:
        return {v: self.keys[v] for v in self.graph[node] if v in self.keys}

    # ---- stage 1 -> 2 --------------------------------------------------------------------------------
    def record_shares(self, replies: dict[int, dict[int, bytes]]) -> None:
        for node in self.keys:
            if node not in replies:
                self.log.drop(node, "share-keys", "no reply")
        good: dict[int, dict[int, bytes]] = {}
        for src, cts in replies.items():
            if src not in self.keys:
                continue
            expected = {v for v in self.graph[src] if v in self.keys}
            if set(cts) != expected:
                self.log.drop(src, "share-keys", "shares not addressed to exactly its alive neighbours")
                continue
            good[src] = cts
        self.shares = good
        self._require(sorted(good), "share-keys")

    def shares_for(self, dst: int) -> dict[int, bytes]:
        """Ciphertexts addressed to ``dst`` from neighbours that completed stage 1."""
        return {src: self.shares[src][dst] for src in self.graph[dst] if src in self.shares}

    # ---- stage 2 -> 3 --------------------------------------------------------------------------------
    def add_upload(self, node: int, words: np.ndarray, clipped: int) -> None:
        """Add one masked upload to the running ring sum (the server never keeps uploads apart)."""
        spec = self.params.quant
        if node not in self.shares or node in self.uploaded:
            self.log.drop(node, "masked-upload", "not expected at this stage")
            return
        if words.dtype != spec.dtype or words.shape != (self.num_words,):
            self.log.drop(node, "masked-upload", f"upload must be {self.num_words} {spec.dtype} words")
            return
        if self._sum is None:
            self._sum = words.copy()
        else:
            np.add(self._sum, words, out=self._sum)
        self.uploaded.append(node)
        self.clipped += int(clipped)

    def close_uploads(self) -> None:
        for node in self.shares:
            if node not in self.uploaded:
                self.log.drop(node, "masked-upload", "no valid masked upload")
        self._require(self.uploaded, "masked-upload")

    def unmask_request(self, node: int) -> tuple[list[int], list[int]]:
        """``(alive, dropped)`` for ``node``: its mask peers that uploaded (and itself) / that did not."""
        peers = [v for v in self.graph[node] if v in self.shares]
        alive = sorted([v for v in peers if v in self.uploaded] + [node])
        dropped = sorted(v for v in peers if v not in self.uploaded)
        return alive, dropped

    # ---- stage 3 -> result ---------------------------------------------------------------------------
    def finish(self, replies: dict[int, tuple[dict[int, bytes], dict[int, bytes]]]) -> np.ndarray:
        """Remove every mask from the ring sum of the uploads.

        Parameters
        ----------
        replies : dict node -> (b shares by owner, s-key shares by owner)
            Unmask replies of the clients that uploaded (missing ones are unmask-stage dropouts).

        Returns
        -------
        np.ndarray, shape [P + 1]
            Sum of the uploaders' quantized words (:func:`quantize.decode_mean` turns it into the mean).
        """
        if self._sum is None:
            raise SecAggAbort("no masked uploads to unmask")
        t = self.params.threshold
        tag = self.params.tag
        b_shares: dict[int, list[bytes]] = {u: [] for u in self.uploaded}
        sk_shares: dict[int, list[bytes]] = {v: [] for v in self.shares if v not in self.uploaded}
        for holder, (bs, sks) in replies.items():
            if holder not in self.uploaded:
                continue
            alive, dropped = self.unmask_request(holder)
            for owner, share in bs.items():
                if owner in alive:
                    b_shares[owner].append(share)
            for owner, share in sks.items():
                if owner in dropped:
                    sk_shares[owner].append(share)
        total = self._sum
        for u, shares in b_shares.items():
            if len(shares) < t:
                raise SecAggAbort(f"only {len(shares)} shares of client {u}'s self mask (threshold {t}); "
                                  "the round is skipped and the global weights are unchanged")
            b = shamir.combine(shares, t, SECRET_BYTES)
            apply_mask_inplace(total, keys.self_mask_seed(b, tag, u), -1)
        for v, shares in sk_shares.items():
            if len(shares) < t:
                raise SecAggAbort(f"only {len(shares)} shares of dropped client {v}'s key (threshold {t}); "
                                  "the round is skipped and the global weights are unchanged")
            sk = shamir.combine(shares, t, SECRET_BYTES)
            s_public = self.keys[v][1]
            if X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw() != s_public:
                raise SecAggAbort(f"the shares of dropped client {v}'s key are inconsistent with its public key")
            for u in self.graph[v]:
                if u in self.uploaded:
                    seed = keys.pairwise_mask_seed(sk, self.keys[u][1], tag, v, u)
                    apply_mask_inplace(total, seed, -_sign(u, v))
        self._sum = None
        return total
