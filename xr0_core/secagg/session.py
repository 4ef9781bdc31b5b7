"""A client's side of one secure-aggregation round: its secrets, its checks, and what it sends at each stage.

The stages and the threat model are described in :mod:`.protocol`; the coordinator's side is :mod:`.server`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from . import identity, keys, shamir
from .masks import CHUNK_WORDS, MaskStreams
from .protocol import (MIN_SESSION_BYTES, SECRET_BYTES, ClientRules, MaskedUpload, PeerKeys, RoundParams,
                       SecAggError, _sign, b_commitment, check_graph, components, consistency_quorum, is_connected)
from .quantize import ChunkEncoder
from .wire import NpyWriter, npy_view


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
    transcript: bytes = b""  # the digest of the whole session this client signed (identity.transcript_digest)
    announced: dict[int, bytes] = field(default_factory=dict)  # U1 node -> its signing key, as in the transcript

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
        if len(params.session_id) < MIN_SESSION_BYTES:
            raise SecAggError(f"the coordinator's session id has {len(params.session_id)} bytes, fewer than "
                              f"{MIN_SESSION_BYTES}: sessions must be told apart; refusing")
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
        """Quantize ``update`` (flat, [P]) weighted by ``num_examples`` and add all masks; ``words`` is a
        writable array (harnesses and tests; a site sends :meth:`mask_pieces`' ``npy`` image)."""
        flat = np.asarray(update).reshape(-1)
        up = self.mask_pieces([flat], flat.size, num_examples)
        return MaskedUpload(up.words.copy(), up.clipped, up.weight_capped)

    def mask_pieces(self, pieces: Iterable[np.ndarray], num_values: int, num_examples: float,
                    scratch: bool = False) -> MaskedUpload:
        """:meth:`mask` of the update given as consecutive pieces (never one whole-model float copy).

        Each cache-sized piece is quantized into a reused buffer, gets every mask (self mask and one per mask
        peer, :class:`MaskStreams`) while it is in cache, and is appended to the upload's ``.npy`` image
        (:class:`NpyWriter`) before the next is read: the site's extra memory is the upload itself, written
        once (no word array beside the bytes the message carries). The words are bit-identical to
        :meth:`mask` of the concatenated update.

        Parameters
        ----------
        pieces : iterable of np.ndarray, each shape [N_i]
            The flat update in order (e.g. new minus global weights, parameter by parameter).
        num_values : int
            P = sum of N_i: the update's length (the server expects P + 1 words).
        num_examples : float
            The site's weight before the cap.
        scratch : bool
            The pieces are the caller's scratch (float64): encoding may overwrite them instead of copying.

        Returns
        -------
        MaskedUpload
            ``npy``: the ``.npy`` image of the [P + 1] masked words (what a Flower ``Array`` carries);
            ``words``: a read-only view of it.
        """
        self._expect("received")
        if not num_examples > 0:
            raise SecAggError("num-examples must be positive")
        fraction = min(1.0, float(num_examples) / self.params.weight_cap)
        spec = self.params.quant
        wq = spec.quantize_weight(fraction)
        encoder = ChunkEncoder(wq, spec)
        streams = MaskStreams(self._mask_seeds(), spec.dtype)
        image = NpyWriter(spec.dtype, int(num_values) + 1)
        buf = np.empty(CHUNK_WORDS, dtype=spec.dtype)  # one piece of words, reused
        off = 0
        for piece in pieces:
            piece = np.asarray(piece).reshape(-1)
            if off + piece.size > num_values:
                raise SecAggError(f"the update is longer than the {num_values} values announced")
            for start in range(0, piece.size, CHUNK_WORDS):
                part = piece[start : start + CHUNK_WORDS]
                out = buf[: part.size]
                encoder.encode_into(part, out, scratch)
                streams.apply_inplace(out)  # masks the piece while it is still in cache
                image.write(out)
                off += part.size
        if off != num_values:
            raise SecAggError(f"the update has {off} values, not the {num_values} announced")
        out = buf[:1]
        out[0] = wq
        streams.apply_inplace(out)
        image.write(out)
        data = image.getvalue()
        self.stage = "masked"
        return MaskedUpload(npy_view(data), encoder.clipped, num_examples > self.params.weight_cap, data)

    def _mask_seeds(self) -> list[tuple[bytes, int]]:
        """(seed, sign) of every mask this site adds: its self mask, and + / - the pairwise mask of each
        neighbour whose share arrived (+ when this site's id is the smaller one, so pairs cancel)."""
        tag = self.params.tag
        out = [(keys.self_mask_seed(self.b, tag, self.node), +1)]
        for v in sorted(self.received):
            out.append((keys.pairwise_mask_seed(self.s.private, self.peer_s[v], tag, self.node, v),
                        _sign(self.node, v)))
        return out

    # ---- stage 3a: consistency ------------------------------------------------------------------------
    def consistency(self, shared: list[int], uploaded: list[int], announced: dict[int, PeerKeys],
                    signing_private: bytes) -> bytes:
        """Check the coordinator's view of the whole session and sign its transcript.

        ``announced``: every node's signed round keys as the coordinator holds them (U1); the transcript this
        site signs covers them, the round's parameters, the graph, U2 (shared keys) and U3 (uploaded), bound
        to the session (:func:`identity.transcript_digest`). Refuses (SecAggError) a view where this site did
        not upload, U3 is not within U2 or U2 not within U1, an announcement is not validly signed, differs
        from what this site saw at stage 1 or uses a key this site did not pin, the senders of the shares this
        site got are not exactly its neighbours in U2 (withheld or invented shares), U3 is below t, or the
        uploaders' neighbour graph is split (a split lets the coordinator unmask a part's sum).
        """
        self._expect("masked")
        u2, u3 = set(int(x) for x in shared), set(int(x) for x in uploaded)
        u1 = {int(v) for v in announced}
        if self.node not in u3 or not u3 <= u2 or not u2 <= u1 or not u1 <= set(self.graph):
            raise SecAggError("the coordinator's survivor lists are inconsistent with this round; refusing")
        tag = self.params.tag
        own = announced[self.node]
        if (own.c, own.s, own.sign) != (self.c.public, self.s.public, self.sign_public):
            raise SecAggError("the coordinator shows other round keys for this site than it announced; refusing")
        for v, pk in announced.items():
            if not isinstance(pk, PeerKeys) or not pk.valid(tag, v):
                raise SecAggError(f"node {v}'s round keys in the transcript are not signed by its signing key; refusing")
            self._check_signing_key(v, pk.sign)
            if v in self.peer_c and (pk.c, pk.s, pk.sign) != (self.peer_c[v], self.peer_s[v], self.peer_sign[v]):
                raise SecAggError(f"the transcript shows other round keys for node {v} than this site received; "
                                  "refusing")
        signing = [pk.sign for pk in announced.values()]
        if len(set(signing)) != len(signing):
            raise SecAggError("two nodes of the transcript show the same signing key; refusing")
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
        self.announced = {v: pk.sign for v, pk in announced.items()}
        self.transcript = identity.transcript_digest(
            tag, self.params.encoded(), identity.graph_digest(self.graph),
            {v: (pk.c, pk.s, pk.sign) for v, pk in announced.items()}, list(u2), list(u3))
        self.stage = "signed"
        return identity.sign(signing_private, identity.view_message(self.transcript, self.node))

    def quorum(self) -> int:
        """Signatures of the same transcript this site needs (:func:`consistency_quorum`): over its pinned
        hospitals, or, unpinned (no guarantee then), over the nodes of the transcript."""
        population = len(self.rules.pinned) if self.rules.pinned is not None else len(self.announced)
        return consistency_quorum(population, self.rules.max_colluders)

    # ---- stage 3b: unmask -----------------------------------------------------------------------------
    def unmask(self, alive: list[int], dropped: list[int],
               signatures: dict[int, tuple[bytes, bytes]]) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Shares of ``b`` for ``alive`` nodes and of ``s.private`` for ``dropped`` ones.

        ``signatures``: uploaders' ``(signing key, signature)`` over the transcript this site signed. Refuses
        (SecAggError) unless at least :meth:`quorum` of them verify, from distinct signers of U3 whose keys are
        the ones in the transcript (and pinned); a forwarded signature that does not verify (the coordinator
        showed another transcript to someone); a request that names a node in both lists or lists other than
        those the signed view implies; or a second request in the same session.
        """
        self._expect("signed")
        self.stage = "done"  # whatever happens below, no second request is served this round
        alive_s, dropped_s = set(alive), set(dropped)
        if alive_s & dropped_s:
            raise SecAggError("the server asked for both shares of one node; refusing")
        u2, u3 = self.view
        if set(signatures) - set(u3):
            raise SecAggError("the consistency round holds signatures of nodes that did not upload; refusing")
        for v, (key, sig) in signatures.items():
            if key != self.announced.get(v):
                raise SecAggError(f"node {v}'s consistency signature is under another key than its announced one; "
                                  "refusing")
            self._check_signing_key(v, key)
            if not identity.verify(key, identity.view_message(self.transcript, v), sig):
                raise SecAggError(f"node {v} did not sign the transcript this site was shown (the coordinator "
                                  "showed different views to different sites); refusing to unmask")
        need = self.quorum()
        if len(signatures) < need:
            raise SecAggError(f"only {len(signatures)} hospitals signed this session's transcript; this site needs "
                              f"{need} (more than (pinned + max colluders) / 2, so that no two different views can "
                              "both gather enough signatures); refusing to unmask")
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
        params = {**self.params.to_flat(), "session-id": h(self.params.session_id)}
        d = {
            "params": params, "node": self.node,
            "graph": {str(k): list(v) for k, v in self.graph.items()},
            "rules": [r.min_threshold, r.min_degree, None if r.pinned is None else sorted(h(x) for x in r.pinned),
                      r.max_colluders],
            "c": [h(self.c.private), h(self.c.public)], "s": [h(self.s.private), h(self.s.public)],
            "sign": h(self.sign_public), "stage": self.stage, "b": h(self.b),
            "peer_c": {str(k): h(v) for k, v in self.peer_c.items()},
            "peer_s": {str(k): h(v) for k, v in self.peer_s.items()},
            "peer_sign": {str(k): h(v) for k, v in self.peer_sign.items()},
            "own": [h(self.own_b_share), h(self.own_sk_share)],
            "received": {str(k): [h(a), h(b)] for k, (a, b) in self.received.items()},
            "rejected": list(self.rejected),
            "view": [list(self.view[0]), list(self.view[1])],
            "transcript": h(self.transcript), "announced": {str(k): h(v) for k, v in self.announced.items()},
        }
        return json.dumps(d).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ClientSession":
        d = json.loads(blob.decode())
        u = bytes.fromhex
        mt, md, pinned, colluders = d["rules"]
        params = RoundParams.from_flat({**d["params"], "session-id": u(d["params"]["session-id"])})
        return cls(
            params=params, node=int(d["node"]),
            graph={int(k): tuple(v) for k, v in d["graph"].items()},
            c=keys.KeyPair(u(d["c"][0]), u(d["c"][1])), s=keys.KeyPair(u(d["s"][0]), u(d["s"][1])),
            rules=ClientRules(mt, md, None if pinned is None else frozenset(u(x) for x in pinned), colluders),
            sign_public=u(d["sign"]), stage=d["stage"], b=u(d["b"]),
            peer_c={int(k): u(v) for k, v in d["peer_c"].items()},
            peer_s={int(k): u(v) for k, v in d["peer_s"].items()},
            peer_sign={int(k): u(v) for k, v in d["peer_sign"].items()},
            own_b_share=u(d["own"][0]), own_sk_share=u(d["own"][1]),
            received={int(k): (u(a), u(b)) for k, (a, b) in d["received"].items()},
            rejected=tuple(int(x) for x in d.get("rejected", [])),
            view=(tuple(d["view"][0]), tuple(d["view"][1])),
            transcript=u(d["transcript"]), announced={int(k): u(v) for k, v in d["announced"].items()},
        )
