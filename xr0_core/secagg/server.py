"""The coordinator's side of one secure-aggregation round: who is still in, what to send each client,
robust reconstruction of the secrets, and the range check of the unmasked sum.

The stages and the threat model are described in :mod:`.protocol`; the client's side is :mod:`.session`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import identity, keys, shamir
from .masks import MaskStreams
from .protocol import (SECRET_BYTES, PeerKeys, RoundParams, SecAggAbort, _sign, b_commitment, components)


class SumOutOfRange(SecAggAbort):
    """The unmasked sum is not one honest uploads can give: some uploader sent words outside the encoding, but
    under masking no single one can be named (``uploaders`` are the nodes whose sum it was)."""

    def __init__(self, message: str, uploaders: list[int]) -> None:
        super().__init__(message)
        self.uploaders = list(uploaders)
from .quantize import QuantizationError, check_sum


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
        self._excluded: dict[int, int] = {}  # sender -> a receiver that rejected its share (add_batch)
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

    def add_batch(self, uploads: Mapping[int, tuple[np.ndarray, int, Iterable[int]]]) -> set[int]:
        """Add masked uploads batch by batch as they arrive, so no more than one batch is held at a time.

        ``uploads``: node -> (masked words, clipped count, senders whose share it rejected). Rejections are
        read first: a sender that a receiver of this batch rejected stays out of the sum, as in
        :meth:`excluded_by_rejections` (its mask for that receiver would not cancel). When that sender's
        upload is already in the sum from an earlier batch, the *receiver* stays out instead: the sum cannot
        give a sender's words back, and leaving the receiver out is the ordinary dropout case (its key's
        shares remove its masks with the summed nodes). So no two summed uploads ever disagree about a mask
        between them. With all replies in one batch this is exactly :meth:`excluded_by_rejections` followed
        by :meth:`add_upload`. (A hostile receiver could already keep any neighbour out by claiming a
        rejection; a hostile sender whose upload is summed first can now keep the receiver out: the same
        power, no secret revealed.)

        Returns
        -------
        set of int
            The nodes of this batch left out because of a rejected share.
        """
        late: dict[int, int] = {}  # receiver -> a summed sender whose share it rejected
        for receiver, (_, _, senders) in sorted(uploads.items()):
            for v in senders:
                v = int(v)
                if v in self.graph.get(receiver, ()) and v in self.shares:
                    if v in self.uploaded:
                        late.setdefault(receiver, v)
                    else:
                        self._excluded.setdefault(v, receiver)
        left_out = set()
        for u in sorted(uploads):
            words, clipped, rejected = uploads[u]
            if u in self._excluded:
                self.log.drop(u, "masked-upload", f"node {self._excluded[u]} could not authenticate the share it sent")
                left_out.add(u)
            elif u in late:
                self.log.drop(u, "masked-upload", f"it could not authenticate node {late[u]}'s share, whose upload "
                                                  "was already in the sum")
                left_out.add(u)
            else:
                self.add_upload(u, words, clipped, rejected)
        return left_out

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
        """(U2, U3): the survivor lists of the transcript every uploader signs in the consistency round."""
        return sorted(self.shares), sorted(self.uploaded)

    def transcript(self) -> bytes:
        """The session's transcript digest as every honest uploader computes it (identity.transcript_digest)."""
        u2, u3 = self.view()
        return identity.transcript_digest(self.params.tag, self.params.encoded(), identity.graph_digest(self.graph),
                                          {u: (pk.c, pk.s, pk.sign) for u, pk in self.announced.items()}, u2, u3)

    def record_signatures(self, replies: dict[int, bytes]) -> None:
        """Keep the uploaders' valid transcript signatures (an invalid one is noted and never forwarded).

        Each site decides for itself whether enough hospitals signed (its quorum counts the keys it pinned);
        the coordinator only refuses to go on with fewer than the threshold, where no site would unmask."""
        digest = self.transcript()
        for node in self.uploaded:
            sig = replies.get(node)
            key = self.announced[node].sign
            if sig is None:
                self.log.note(node, "consistency: no signature")
            elif not identity.verify(key, identity.view_message(digest, node), sig):
                self.log.note(node, "consistency: signature does not verify")
            else:
                self.signatures[node] = (key, sig)
        if len(self.signatures) < self.params.threshold:
            missing = sorted(set(self.uploaded) - set(self.signatures))
            raise SecAggAbort(f"only {len(self.signatures)} uploaders signed the session's transcript (missing "
                              f"{missing}), fewer than the threshold {self.params.threshold}; no site would unmask, "
                              "so the round is skipped and the global weights are unchanged")

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
        removals: list[tuple[bytes, int]] = []  # every mask to take off, applied in one pass below
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
            removals.append((keys.self_mask_seed(b, tag, u), -1))
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
                    removals.append((seed, -_sign(u, v)))
        # All masks come off together, one cache-sized piece of the sum at a time (masks.MaskStreams).
        MaskStreams(removals, total.dtype).apply_inplace(total)
        self._sum = None
        try:
            check_sum(total, self.params.quant, len(self.uploaded))
        except QuantizationError as exc:
            raise SumOutOfRange(f"the unmasked sum is outside what {len(self.uploaded)} honest uploads can give "
                                f"({exc}); one of the uploaders sent words outside the encoding (poisoning or "
                                "corruption; under masking it cannot be told which), so the round is skipped and "
                                "the global weights are unchanged", sorted(self.uploaded)) from None
        return total
