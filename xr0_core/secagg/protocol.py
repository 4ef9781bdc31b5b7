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

Threat model: a coordinator that may deviate, hospitals that may send garbage; see
docs/secure-aggregation.md for what holds and what does not (pinned signing keys, no range proofs).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import struct
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import identity, keys, shamir
from .masks import apply_mask_inplace
from .quantize import QuantizationError, QuantSpec, check_sum, quantize

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


def is_connected(nodes, graph: dict[int, tuple[int, ...]]) -> bool:
    """Whether ``nodes`` induce a connected subgraph of ``graph`` (no node: not connected)."""
    nodes = set(nodes)
    if not nodes:
        return False
    start = next(iter(nodes))
    seen, todo = {start}, [start]
    while todo:
        u = todo.pop()
        for v in graph.get(u, ()):
            if v in nodes and v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == nodes


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
    min_degree: int = 1
    pinned: frozenset[bytes] | None = None


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


@dataclass
class ClientSession:
    """One client's secrets and progress for one round. Lives only in the client's memory /
    ``context.state``; :meth:`to_bytes` exists for that and nothing else (never log or send it)."""

    params: RoundParams
    node: int
    graph: dict[int, tuple[int, ...]]
    c: keys.KeyPair
    s: keys.KeyPair
    rules: ClientRules = field(default_factory=ClientRules)
    sign_public: bytes = b""
    stage: str = "setup"  # setup -> shared -> received -> masked -> signed -> done
    b: bytes = b""
    peer_c: dict[int, bytes] = field(default_factory=dict)
    peer_s: dict[int, bytes] = field(default_factory=dict)
    peer_sign: dict[int, bytes] = field(default_factory=dict)
    own_b_share: bytes = b""
    own_sk_share: bytes = b""
    received: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # src -> (b share, sk share)
    rejected: tuple[int, ...] = ()  # senders whose share failed authentication: not mask peers
    view: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # (U2, U3) this client signed

    @property
    def neighbours(self) -> tuple[int, ...]:
        return self.graph[self.node]

    # ---- stage 0 ------------------------------------------------------------------------------------
    @classmethod
    def start(cls, params: RoundParams, node: int, graph: dict[int, tuple[int, ...]],
              rules: ClientRules = ClientRules(), sign_public: bytes = b"") -> "ClientSession":
        """A fresh session after the site's checks of the round's parameters.

        ``graph``: the round's whole neighbour graph (every site is shown the same one; the consistency
        round checks that through its digest).

        Raises
        ------
        SecAggError
            t < 2 or below the policy's ``min-threshold``; a degree below ``min-degree``; ``2t <= k + 1``
            (two disjoint groups of holders could then rebuild both of this site's secrets); a graph that is
            not symmetric or does not hold this node.
        """
        graph = {int(u): tuple(sorted(int(v) for v in vs)) for u, vs in graph.items()}
        if node not in graph:
            raise SecAggError("the neighbour graph the coordinator sent does not hold this node")
        check_graph(graph)
        t = params.threshold
        if t < max(2, rules.min_threshold):
            raise SecAggError(f"the coordinator asks for threshold t = {t}, below this site's minimum "
                              f"{max(2, rules.min_threshold)} (secagg.min-threshold): one share would rebuild a "
                              "secret; refusing")
        deg = len(graph[node])
        if deg < rules.min_degree:
            raise SecAggError(f"the coordinator gives this site {deg} neighbours, below its secagg.min-degree "
                              f"{rules.min_degree}; refusing")
        if not 2 * t > deg + 1 or t > deg + 1:
            raise SecAggError(f"threshold t = {t} is not a strict majority of this site's {deg + 1} share holders: "
                              "two disjoint groups could rebuild both of its secrets; refusing")
        return cls(params, node, graph, keys.KeyPair.generate(), keys.KeyPair.generate(), rules, sign_public)

    def public_keys(self) -> tuple[bytes, bytes]:
        return self.c.public, self.s.public

    def announce(self, signing_private: bytes) -> PeerKeys:
        """The setup reply: both round public keys, signed with the site's long-term signing key."""
        sign_pk = identity.public_of(signing_private)
        if self.sign_public and sign_pk != self.sign_public:
            raise SecAggError("the signing key changed within a round")
        self.sign_public = sign_pk
        msg = identity.key_message(self.params.tag, self.node, self.c.public, self.s.public)
        return PeerKeys(self.c.public, self.s.public, sign_pk, identity.sign(signing_private, msg))

    def _check_signing_key(self, node: int, key: bytes) -> None:
        pinned = self.rules.pinned
        if pinned is not None and key not in pinned:
            raise SecAggError(f"node {node}'s signing key is not one this site pinned (secagg.peer-keys); "
                              "refusing (the coordinator may be impersonating a hospital)")

    # ---- stage 1 ------------------------------------------------------------------------------------
    def share_keys(self, peers: dict[int, PeerKeys]) -> dict[int, bytes]:
        """Encrypted shares for every alive neighbour, from their signed announcements."""
        self._expect("setup")
        unknown = set(peers) - set(self.neighbours)
        if unknown:
            raise SecAggError(f"the server sent keys of nodes {sorted(unknown)} that are not neighbours")
        tag = self.params.tag
        for v, pk in peers.items():
            if not isinstance(pk, PeerKeys) or not pk.valid(tag, v):
                raise SecAggError(f"node {v}'s round keys are not signed by the signing key sent with them; refusing")
            self._check_signing_key(v, pk.sign)
        own = {self.c.public, self.s.public}
        for what, vals in (("signing", [pk.sign for pk in peers.values()] + [self.sign_public]),
                           ("round", [pk.c for pk in peers.values()] + [pk.s for pk in peers.values()] + list(own))):
            vals = [x for x in vals if x]
            if len(set(vals)) != len(vals):
                raise SecAggError(f"two nodes of this round show the same {what} public key; refusing")
        if len(peers) < self.rules.min_degree:
            raise SecAggError(f"only {len(peers)} neighbours reached stage 1, below this site's secagg.min-degree "
                              f"{self.rules.min_degree}; refusing")
        holders = sorted(set(peers) | {self.node})
        t = self.params.threshold
        if len(holders) < t:
            raise SecAggError(f"{len(holders)} share holders < threshold {t}")
        self.peer_c = {v: pk.c for v, pk in peers.items()}
        self.peer_s = {v: pk.s for v, pk in peers.items()}
        self.peer_sign = {v: pk.sign for v, pk in peers.items()}
        self.b = os.urandom(SECRET_BYTES)
        b_shares = shamir.split(self.b, t, holders)
        sk_shares = shamir.split(self.s.private, t, holders)
        self.own_b_share, self.own_sk_share = b_shares[self.node], sk_shares[self.node]
        out = {
            v: keys.encrypt_share(self.c.private, self.peer_c[v], tag, self.node, v, b_shares[v] + sk_shares[v])
            for v in holders if v != self.node
        }
        self.stage = "shared"
        return out

    def b_commitment(self) -> bytes:
        """Sent with the shares: lets the server verify the self-mask secret it rebuilds."""
        return b_commitment(self.b, self.params.tag, self.node)

    # ---- stage 2 ------------------------------------------------------------------------------------
    def receive_shares(self, ciphertexts: dict[int, bytes]) -> list[int]:
        """Decrypt and keep the shares neighbours sent; their senders are this round's mask peers.

        A share that fails authentication (tampered in transit, or a hostile sender) is left out: its sender
        is not a mask peer, and the returned list tells the server, which then keeps that sender's upload out
        of the sum (its mask for this site would not cancel). Raises :class:`SecAggError` when fewer than
        t - 1 good shares arrive: a coordinator that withholds a site's shares would leave it masked by its
        self mask alone, which the same coordinator can then remove.

        Returns
        -------
        list of int
            Senders whose share was rejected.
        """
        self._expect("shared")
        tag = self.params.tag
        received: dict[int, tuple[bytes, bytes]] = {}
        rejected: list[int] = []
        for src, blob in ciphertexts.items():
            if src not in self.peer_c:
                raise SecAggError(f"a share from node {src}, which was not a neighbour at stage 1")
            try:
                if not isinstance(blob, bytes):
                    raise keys.ShareRejected(f"share from node {src} is not bytes")
                plain = keys.decrypt_share(self.c.private, self.peer_c[src], tag, src, self.node, blob)
                if len(plain) != 2 * shamir.SHARE_BYTES:
                    raise keys.ShareRejected(f"share from node {src} has the wrong length")
            except keys.ShareRejected:
                rejected.append(src)
                continue
            received[src] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        t = self.params.threshold
        if len(received) + 1 < t:
            raise SecAggError(f"only {len(received)} neighbours' shares arrived intact ({len(rejected)} failed "
                              f"authentication); with threshold {t} this site needs at least {t - 1} pairwise masks; "
                              "refusing to upload")
        self.received = received
        self.rejected = tuple(sorted(rejected))
        self.stage = "received"
        return list(self.rejected)

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

    # ---- stage 3a: consistency ------------------------------------------------------------------------
    def consistency(self, shared: list[int], uploaded: list[int], signing_private: bytes) -> bytes:
        """Check the coordinator's view (U2 shared keys, U3 uploaded) and sign it.

        Refuses (SecAggError) a view where this site did not upload, U3 is not within U2, the senders of the
        shares this site got are not exactly its neighbours in U2 (withheld or invented shares), U3 is below t,
        or the uploaders' neighbour graph is split (a split lets the coordinator unmask a part's sum).
        """
        self._expect("masked")
        u2, u3 = set(int(x) for x in shared), set(int(x) for x in uploaded)
        if self.node not in u3 or not u3 <= u2 or not u2 <= set(self.graph):
            raise SecAggError("the coordinator's survivor lists are inconsistent with this round; refusing")
        if set(self.received) | set(self.rejected) != (set(self.neighbours) & u2) - {self.node}:
            raise SecAggError("the coordinator's list of sites that shared keys does not match the shares this "
                              "site received; refusing")
        if set(self.rejected) & u3:
            raise SecAggError("the coordinator counts an upload from a node whose share this site rejected; refusing")
        if len(u3) < self.params.threshold:
            raise SecAggError(f"only {len(u3)} uploads < threshold {self.params.threshold}; refusing")
        if not is_connected(u3, self.graph):
            raise SecAggError(f"the uploaders' neighbour graph is split into {len(components(u3, self.graph))} "
                              "parts: the coordinator could unmask each part's sum; refusing to unmask")
        self.view = (tuple(sorted(u2)), tuple(sorted(u3)))
        self.stage = "signed"
        return identity.sign(signing_private, self._view_message(self.node))

    def _view_message(self, signer: int) -> bytes:
        u2, u3 = self.view
        return identity.view_message(self.params.tag, identity.graph_digest(self.graph), list(u2), list(u3), signer)

    # ---- stage 3b: unmask -----------------------------------------------------------------------------
    def unmask(self, alive: list[int], dropped: list[int],
               signatures: dict[int, tuple[bytes, bytes]]) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Shares of ``b`` for ``alive`` nodes and of ``s.private`` for ``dropped`` ones.

        ``signatures``: every uploader's ``(signing key, signature)`` over the view this site signed. Refuses
        (SecAggError) unless every uploader signed the same view with a distinct (and, where keys are pinned,
        pinned) key, a request that names a node in both lists or lists other than those the signed view
        implies, or a second request in the same round.
        """
        self._expect("signed")
        self.stage = "done"  # whatever happens below, no second request is served this round
        alive_s, dropped_s = set(alive), set(dropped)
        if alive_s & dropped_s:
            raise SecAggError("the server asked for both shares of one node; refusing")
        u2, u3 = self.view
        missing = sorted(set(u3) - set(signatures))
        if missing or set(signatures) - set(u3):
            raise SecAggError(f"the consistency round lacks signatures of uploaders {missing} (or holds others); "
                              "refusing to unmask")
        sign_keys = [signatures[v][0] for v in u3]
        if len(set(sign_keys)) != len(sign_keys):
            raise SecAggError("two uploaders show the same signing key; refusing")
        for v in u3:
            key, sig = signatures[v]
            known = self.sign_public if v == self.node else self.peer_sign.get(v)
            if known is not None and known and key != known:
                raise SecAggError(f"node {v}'s signing key differs from the one it used at setup; refusing")
            self._check_signing_key(v, key)
            if not identity.verify(key, self._view_message(v), sig):
                raise SecAggError(f"node {v} did not sign the survivor lists this site was shown (the coordinator "
                                  "showed different lists to different sites); refusing to unmask")
        peers = set(self.received)
        want_alive = (peers & set(u3)) | {self.node}
        want_dropped = peers - set(u3)
        if alive_s != want_alive or dropped_s != want_dropped:
            raise SecAggError("the unmask request does not match the signed survivor lists; refusing")
        b_shares = {v: (self.own_b_share if v == self.node else self.received[v][0]) for v in sorted(alive_s)}
        sk_shares = {v: self.received[v][1] for v in sorted(dropped_s)}
        return b_shares, sk_shares

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"secure-aggregation message out of order: expected stage {stage!r}, at {self.stage!r}")

    # ---- storage in context.state ------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        h = bytes.hex
        r = self.rules
        d = {
            "params": self.params.to_flat(), "node": self.node,
            "graph": {str(k): list(v) for k, v in self.graph.items()},
            "rules": [r.min_threshold, r.min_degree, None if r.pinned is None else sorted(h(x) for x in r.pinned)],
            "c": [h(self.c.private), h(self.c.public)], "s": [h(self.s.private), h(self.s.public)],
            "sign": h(self.sign_public), "stage": self.stage, "b": h(self.b),
            "peer_c": {str(k): h(v) for k, v in self.peer_c.items()},
            "peer_s": {str(k): h(v) for k, v in self.peer_s.items()},
            "peer_sign": {str(k): h(v) for k, v in self.peer_sign.items()},
            "own": [h(self.own_b_share), h(self.own_sk_share)],
            "received": {str(k): [h(a), h(b)] for k, (a, b) in self.received.items()},
            "rejected": list(self.rejected),
            "view": [list(self.view[0]), list(self.view[1])],
        }
        return json.dumps(d).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ClientSession":
        d = json.loads(blob.decode())
        u = bytes.fromhex
        mt, md, pinned = d["rules"]
        return cls(
            params=RoundParams.from_flat(d["params"]), node=int(d["node"]),
            graph={int(k): tuple(v) for k, v in d["graph"].items()},
            c=keys.KeyPair(u(d["c"][0]), u(d["c"][1])), s=keys.KeyPair(u(d["s"][0]), u(d["s"][1])),
            rules=ClientRules(mt, md, None if pinned is None else frozenset(u(x) for x in pinned)),
            sign_public=u(d["sign"]), stage=d["stage"], b=u(d["b"]),
            peer_c={int(k): u(v) for k, v in d["peer_c"].items()},
            peer_s={int(k): u(v) for k, v in d["peer_s"].items()},
            peer_sign={int(k): u(v) for k, v in d["peer_sign"].items()},
            own_b_share=u(d["own"][0]), own_sk_share=u(d["own"][1]),
            received={int(k): (u(a), u(b)) for k, (a, b) in d["received"].items()},
            rejected=tuple(int(x) for x in d.get("rejected", [])),
            view=(tuple(d["view"][0]), tuple(d["view"][1])),
        )


@dataclass
class StageLog:
    """Which nodes left the round at which stage, with the reason (for the round's report), and notes on
    nodes that stayed in but sent something malformed (ignored)."""

    dropped: dict[int, tuple[str, str]] = field(default_factory=dict)  # node -> (stage, reason)
    notes: dict[int, list[str]] = field(default_factory=dict)  # node -> what of its reply was ignored

    def drop(self, node: int, stage: str, reason: str) -> None:
        self.dropped.setdefault(node, (stage, reason))

    def note(self, node: int, text: str) -> None:
        if text not in self.notes.setdefault(node, []):
            self.notes[node].append(text)


MAX_SUBSETS = 256  # share subsets tried per secret before the round is skipped (bounds a hostile holder's cost)


def _share_ok(share: object, holder: int) -> bool:
    """A share as its holder must return it: 74 bytes, the holder's own x-coordinate, y in the field."""
    if not isinstance(share, bytes) or len(share) != shamir.SHARE_BYTES:
        return False
    return (int.from_bytes(share[:8], "big") == shamir.holder_x(holder)
            and int.from_bytes(share[8:], "big") < shamir.PRIME)


def reconstruct(shares: list[bytes], t: int, accept) -> bytes | None:
    """The secret from some t of ``shares`` that ``accept(secret)`` confirms, or None.

    Tries subsets in order (first the first t, then ones that leave out earlier shares), at most
    :data:`MAX_SUBSETS`: one corrupted share among more than t costs a few tries, not the round.
    """
    for i, subset in enumerate(itertools.combinations(shares, t)):
        if i >= MAX_SUBSETS:
            break
        try:
            secret = shamir.combine(list(subset), t, SECRET_BYTES)
        except shamir.ShamirError:
            continue
        if accept(secret):
            return secret
    return None


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
        self.announced: dict[int, PeerKeys] = {}  # U1: node -> signed announcement
        self.shares: dict[int, dict[int, bytes]] = {}  # U2: src -> {dst: ciphertext}
        self.commits: dict[int, bytes] = {}  # U2: node -> commitment to its b
        self._sum: np.ndarray | None = None
        self.uploaded: list[int] = []  # U3
        self.rejected: dict[int, set[int]] = {}  # uploader -> senders whose share it rejected (no mask with them)
        self.signatures: dict[int, tuple[bytes, bytes]] = {}  # U3: node -> (signing key, view signature)
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

    def _prune(self, alive: set[int], stage: str, why: str) -> set[int]:
        """Drop nodes whose alive neighbourhood (plus itself) is below t: their secrets could never be rebuilt."""
        changed = True
        while changed:
            changed = False
            for node in sorted(alive):
                if len([v for v in self.graph[node] if v in alive]) + 1 < self.params.threshold:
                    alive.discard(node)
                    self.log.drop(node, stage, why)
                    changed = True
        return alive

    # ---- stage 0 -> 1 --------------------------------------------------------------------------------
    def record_keys(self, replies: dict[int, PeerKeys]) -> None:
        """Keep the announcements whose signature verifies and whose signing key no other node uses."""
        tag = self.params.tag
        good: dict[int, PeerKeys] = {}
        used: dict[bytes, int] = {}
        for node in self.nodes:
            pk = replies.get(node)
            if pk is None:
                self.log.drop(node, "setup", "no reply")
            elif not isinstance(pk, PeerKeys) or not pk.valid(tag, node):
                self.log.drop(node, "setup", "round keys not signed by the signing key sent with them")
            elif pk.sign in used:
                self.log.drop(node, "setup", f"signing key already used by node {used[pk.sign]}")
            else:
                used[pk.sign] = node
                good[node] = pk
        alive = self._prune(set(good), "setup", "too few neighbours alive to hold its shares")
        self.announced = {n: good[n] for n in sorted(alive)}
        self.keys = {n: (pk.c, pk.s) for n, pk in self.announced.items()}
        self._require(sorted(alive), "setup")

    def peer_keys(self, node: int) -> dict[int, PeerKeys]:
        return {v: self.announced[v] for v in self.graph[node] if v in self.announced}

    # ---- stage 1 -> 2 --------------------------------------------------------------------------------
    def record_shares(self, replies: dict[int, dict[int, bytes]], commits: dict[int, bytes]) -> None:
        """Keep complete share sets, then re-prune: a node whose neighbours that shared keys (plus itself)
        are below t would refuse to upload, and its own secrets could not be rebuilt."""
        for node in self.keys:
            if node not in replies:
                self.log.drop(node, "share-keys", "no reply")
        good: dict[int, dict[int, bytes]] = {}
        for src, cts in replies.items():
            if src not in self.keys:
                continue
            expected = {v for v in self.graph[src] if v in self.keys}
            if not isinstance(cts, dict) or set(cts) != expected or not all(isinstance(c, bytes) for c in cts.values()):
                self.log.drop(src, "share-keys", "shares not addressed to exactly its alive neighbours")
                continue
            commit = commits.get(src)
            if not isinstance(commit, bytes) or len(commit) != 32:
                self.log.drop(src, "share-keys", "no 32-byte commitment to its self-mask secret")
                continue
            good[src] = cts
        alive = self._prune(set(good), "share-keys", "too few neighbours completed key sharing to hold its shares")
        self.shares = {n: good[n] for n in sorted(alive)}
        self.commits = {n: commits[n] for n in self.shares}
        self._require(sorted(alive), "share-keys")

    def shares_for(self, dst: int) -> dict[int, bytes]:
        """Ciphertexts addressed to ``dst`` from neighbours that completed stage 1."""
        return {src: self.shares[src][dst] for src in self.graph[dst] if src in self.shares}

    # ---- stage 2 -> 3 --------------------------------------------------------------------------------
    def excluded_by_rejections(self, rejections: dict[int, list[int]]) -> dict[int, int]:
        """Senders some uploader rejected the share of: ``sender -> a receiver that rejected it``. Their uploads
        must stay out of the sum (their mask for that receiver would not cancel); call before adding uploads."""
        out: dict[int, int] = {}
        for receiver, senders in sorted(rejections.items()):
            for v in senders:
                if v in self.graph.get(receiver, ()) and v in self.shares:
                    out.setdefault(v, receiver)
        return out

    def add_upload(self, node: int, words: np.ndarray, clipped: int, rejected=()) -> None:
        """Add one masked upload to the running ring sum (the server never keeps uploads apart).

        ``rejected``: the senders whose share this node rejected (it did not mask with them).
        """
        spec = self.params.quant
        if node not in self.shares or node in self.uploaded:
            self.log.drop(node, "masked-upload", "not expected at this stage")
            return
        rejected = {int(v) for v in rejected}
        if not rejected <= {v for v in self.graph[node] if v in self.shares}:
            self.log.drop(node, "masked-upload", "claims to have rejected shares of nodes that sent it none")
            return
        if not isinstance(words, np.ndarray) or words.dtype != spec.dtype or words.shape != (self.num_words,):
            self.log.drop(node, "masked-upload", f"upload must be {self.num_words} {spec.dtype} words")
            return
        if self._sum is None:
            self._sum = words.copy()
        else:
            np.add(self._sum, words, out=self._sum)
        self.uploaded.append(node)
        self.rejected[node] = rejected
        self.clipped += max(0, int(clipped))

    def close_uploads(self) -> None:
        """End of stage 2: enough uploads, and the uploaders' neighbour graph in one piece (a split graph
        would let the server unmask each part's sum: the partial-sum attack on SecAgg+)."""
        for node in self.shares:
            if node not in self.uploaded:
                self.log.drop(node, "masked-upload", "no valid masked upload")
        self._require(self.uploaded, "masked-upload")
        parts = components(self.uploaded, self.graph)
        if len(parts) > 1:
            raise SecAggAbort(f"the uploaders' neighbour graph is split into {len(parts)} parts (sizes "
                              f"{sorted(len(p) for p in parts)}) after dropouts; unmasking would reveal each part's "
                              "sum, so the round is skipped and the global weights are unchanged (raise "
                              "secagg.num-neighbours)")

    def view(self) -> tuple[list[int], list[int]]:
        """(U2, U3): the lists every uploader signs in the consistency round."""
        return sorted(self.shares), sorted(self.uploaded)

    def record_signatures(self, replies: dict[int, bytes]) -> None:
        """Keep the uploaders' view signatures; every uploader must sign (else clients refuse to unmask)."""
        u2, u3 = self.view()
        digest = identity.graph_digest(self.graph)
        for node in u3:
            sig = replies.get(node)
            key = self.announced[node].sign
            if sig is None:
                self.log.note(node, "consistency: no signature")
            elif not identity.verify(key, identity.view_message(self.params.tag, digest, u2, u3, node), sig):
                self.log.note(node, "consistency: signature does not verify")
            else:
                self.signatures[node] = (key, sig)
        missing = sorted(set(u3) - set(self.signatures))
        if missing:
            raise SecAggAbort(f"uploaders {missing} did not sign the survivor lists in the consistency round; the "
                              "other sites refuse to unmask without every uploader's signature, so the round is "
                              "skipped and the global weights are unchanged")

    def unmask_request(self, node: int) -> tuple[list[int], list[int]]:
        """``(alive, dropped)`` for ``node``: its mask peers that uploaded (and itself) / that did not."""
        peers = [v for v in self.graph[node] if v in self.shares and v not in self.rejected.get(node, ())]
        alive = sorted([v for v in peers if v in self.uploaded] + [node])
        dropped = sorted(v for v in peers if v not in self.uploaded)
        return alive, dropped

    # ---- stage 3 -> result ---------------------------------------------------------------------------
    def finish(self, replies: dict[int, tuple[dict[int, bytes], dict[int, bytes]]]) -> np.ndarray:
        """Remove every mask from the ring sum of the uploads and check the result is in range.

        A share that is malformed, carries another holder's x-coordinate or does not fit (the rebuilt
        secret fails its commitment / public key) is ignored and its holder noted; other subsets of t
        shares are tried (:func:`reconstruct`). The unmasked sum must pass :func:`quantize.check_sum`
        (0 < sum of weights <= n L, every |sum of q| <= sum of weights): a client that sent words outside
        the encoding (e.g. 2^28 added to one word, a negative weight) makes the round skip.

        Parameters
        ----------
        replies : dict node -> (b shares by owner, s-key shares by owner)
            Unmask replies of the clients that uploaded (missing ones are unmask-stage dropouts).

        Returns
        -------
        np.ndarray, shape [P + 1]
            Sum of the uploaders' quantized words (:func:`quantize.decode_mean` turns it into the mean).

        Raises
        ------
        SecAggAbort
            A secret that cannot be rebuilt, or an unmasked sum outside the encoding's range.
        """
        if self._sum is None:
            raise SecAggAbort("no masked uploads to unmask")
        t = self.params.threshold
        tag = self.params.tag
        b_shares: dict[int, list[bytes]] = {u: [] for u in self.uploaded}
        # dropouts some uploader masked with (none when every receiver rejected the dropout's share)
        sk_shares: dict[int, list[bytes]] = {
            v: [] for v in self.shares if v not in self.uploaded
            and any(u in self.uploaded and v not in self.rejected.get(u, ()) for u in self.graph[v])}
        for holder, reply in replies.items():
            if holder not in self.uploaded:
                continue
            try:
                bs, sks = reply
                bs, sks = dict(bs), dict(sks)
            except (TypeError, ValueError):
                self.log.note(holder, "unmask: malformed reply ignored")
                continue
            alive, dropped = self.unmask_request(holder)
            for owner, share in bs.items():
                if owner in alive:
                    if _share_ok(share, holder):
                        b_shares[owner].append(share)
                    else:
                        self.log.note(holder, "unmask: malformed share or wrong x-coordinate ignored")
            for owner, share in sks.items():
                if owner in dropped and owner in sk_shares:
                    if _share_ok(share, holder):
                        sk_shares[owner].append(share)
                    else:
                        self.log.note(holder, "unmask: malformed share or wrong x-coordinate ignored")
        total = self._sum
        for u, shares in b_shares.items():
            if len(shares) < t:
                raise SecAggAbort(f"only {len(shares)} valid shares of client {u}'s self mask (threshold {t}); "
                                  "the round is skipped and the global weights are unchanged")
            commit = self.commits[u]
            b = reconstruct(shares, t, lambda sec, u=u, commit=commit: b_commitment(sec, tag, u) == commit)
            if b is None:
                raise SecAggAbort(f"no {t} of the {len(shares)} shares of client {u}'s self mask rebuild the secret "
                                  "it committed to (corrupted shares); the round is skipped and the global weights "
                                  "are unchanged")
            apply_mask_inplace(total, keys.self_mask_seed(b, tag, u), -1)
        for v, shares in sk_shares.items():
            if len(shares) < t:
                raise SecAggAbort(f"only {len(shares)} valid shares of dropped client {v}'s key (threshold {t}); "
                                  "the round is skipped and the global weights are unchanged")
            s_public = self.keys[v][1]

            def matches(sec: bytes, s_public=s_public) -> bool:
                return X25519PrivateKey.from_private_bytes(sec).public_key().public_bytes_raw() == s_public

            sk = reconstruct(shares, t, matches)
            if sk is None:
                raise SecAggAbort(f"no {t} of the {len(shares)} shares of dropped client {v}'s key match its public "
                                  "key (corrupted shares); the round is skipped and the global weights are unchanged")
            for u in self.graph[v]:
                if u in self.uploaded and v not in self.rejected.get(u, ()):
                    seed = keys.pairwise_mask_seed(sk, self.keys[u][1], tag, v, u)
                    apply_mask_inplace(total, seed, -_sign(u, v))
        self._sum = None
        try:
            check_sum(total, self.params.quant, len(self.uploaded))
        except QuantizationError as exc:
            raise SecAggAbort(f"the unmasked sum is outside what {len(self.uploaded)} honest uploads can give "
                              f"({exc}); a site sent words outside the encoding (poisoning or corruption), so the "
                              "round is skipped and the global weights are unchanged") from None
        return total
