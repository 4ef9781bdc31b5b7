"""Client stages of secure aggregation (SecAgg+ over Flower's Message API).

Message types (sent by ``strategies/secagg.py``; routed by Flower's ClientApp on ``<category>.<action>``):

- ``query.secagg_setup``      -> fresh per-round X25519 key pairs; reply: the two public keys
- ``query.secagg_share_keys`` -> neighbours' public keys in; encrypted Shamir shares out
- ``train.secagg``            -> the normal train instruction + shares addressed to this site; the site
  trains exactly as for a plain round (the ``train_fn`` given to :func:`register`), then replies with the
  *masked* quantized update instead of its weights, and scalar metrics without ``num-examples``
- ``query.secagg_consistency`` -> the survivor lists (who shared keys, who uploaded) in; the site checks them
  (its received shares match, the uploaders' graph is connected, at least t) and signs them
- ``query.secagg_unmask``     -> alive / dropped neighbours and every uploader's signature in; shares of their
  secrets out only when every uploader signed the same lists

The round's secrets (private keys, self-mask seed, shares received) live in ``context.state`` under
:data:`STATE_KEY` between stages and are deleted after the unmask stage; they are never logged and never
leave the site in clear (the audit log records only the outgoing masked words' hash and sizes).

What the site insists on comes from its site policy (``[secagg]``: minimum threshold and degree, pinned
peer signing keys) through :class:`SiteTrust`; its long-term signing key lives in its state folder
(``xr0_core/secagg/identity.py``). Clear metrics beside the masked vector are only those the policy lets
leave, never one that reveals the site's size (``SIZE_REVEALING_METRICS``).

Where differential privacy plugs in: :func:`prepare_update` is the one place between "the site's update"
and "the vector that gets masked". Both sample-level and client-level DP already happened inside
``train_fn``; client-level DP adds the site's *full* noise there (see :func:`prepare_update`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from xr0_core import record_keys as keys
from xr0_core.secagg import identity
from xr0_core.secagg.protocol import ClientRules, PeerKeys, RoundParams, SecAggError
from xr0_core.secagg.masks import CHUNK_WORDS
from xr0_core.secagg.session import ClientSession
from xr0_core.secagg.wire import (CLIPPED, CONSISTENCY, MASKED, REC, SETUP, SHARE_KEYS, TRAIN_ACTION, UNMASK,
                                  NUMPY_STYPE, WORDS, array_view, graph_from_flat, release)
from xr0_core.site.policy import SitePolicy

log = logging.getLogger(__name__)

STATE_KEY = "xr0-secagg"  # context.state ConfigRecord holding this round's ClientSession

TrainFn = Callable[[Message, Context], Message]


class UploadLog(Protocol):
    """Where a site records the (run key, round) pairs it uploaded for (:class:`xr0_core.site.refusals.UploadRecord`
    on disk; :class:`MemoryUploads` in in-process harnesses)."""

    def check(self, run_key: str, server_round: int) -> None: ...

    def record(self, run_key: str, server_round: int) -> None: ...


class MemoryUploads:
    """:class:`UploadLog` in memory (tests, benchmarks): the same refusal as the on-disk record."""

    def __init__(self) -> None:
        self.done: set[tuple[str, int]] = set()

    def check(self, run_key: str, server_round: int) -> None:
        from xr0_core.site.policy import PolicyRefusal

        if (run_key, int(server_round)) in self.done:
            raise PolicyRefusal(f"secure aggregation: this hospital already sent its masked update for round "
                                f"{server_round} of this run; it uploads once per round, refusing")

    def record(self, run_key: str, server_round: int) -> None:
        self.check(run_key, server_round)
        self.done.add((run_key, int(server_round)))


@dataclass(frozen=True)
class SiteTrust:
    """What a site brings to a secure round: its long-term signing key, its rules, its policy, and the record
    of the rounds it already uploaded for (at most one masked upload per run and round)."""

    signer: bytes  # Ed25519 private key (never leaves the site)
    rules: ClientRules
    policy: SitePolicy
    uploads: UploadLog = field(default_factory=MemoryUploads)


TrustFn = Callable[[Context], SiteTrust]


def rules_from_policy(policy: SitePolicy, pinned: frozenset[bytes] | None) -> ClientRules:
    return ClientRules(policy.secagg.min_threshold,
                       policy.secagg.effective_min_degree(len(pinned) if pinned is not None else None), pinned,
                       policy.secagg.max_colluders)


def site_trust(context: Context) -> SiteTrust:
    """The real site's trust: policy and signing key from its state folder.

    Pinned peer keys (:func:`xr0_core.site.refusals.pinned_peer_keys`): the policy's ``secagg.peer-keys``
    when set; in simulation (no such list) the keys the simulated hospitals publish in their state folders
    under ``simulation.state-root`` (each made by that hospital); in deployment without a list the site
    refuses, unless its policy acknowledges ``secagg.allow-unpinned = true`` (then: any key, honest-but-
    curious coordinator only).
    """
    from xr0_core.config import from_flat
    from xr0_core.site.refusals import UploadRecord, pinned_peer_keys

    from .site import resolve_site

    site = resolve_site(context.node_config, from_flat(dict(context.run_config)))
    policy = site.policy()
    signer = identity.load_or_create(site.state_dir)
    published = None
    if site.partition_id is not None and not policy.secagg.peer_keys:
        found = (identity.read_public(d) for d in site.state_dir.parent.iterdir() if d.is_dir())
        published = [k for k in found if k is not None]
    pinned = pinned_peer_keys(policy, identity.public_of(signer), published=published)
    return SiteTrust(signer, rules_from_policy(policy, pinned), policy, UploadRecord(site.state_dir))


def in_memory_trust(policy: SitePolicy | None = None) -> TrustFn:
    """Trust for in-process harnesses (tests, benchmarks): one signing key per node id made on first use,
    every key made so far pinned, the same ``policy`` at every node (default: the policy defaults)."""
    signers: dict[int, bytes] = {}
    uploads: dict[int, MemoryUploads] = {}
    pol = policy or SitePolicy()

    def trust(context: Context) -> SiteTrust:
        node = int(context.node_id)
        if node not in signers:
            signers[node] = identity.generate_signing_key()
            uploads[node] = MemoryUploads()
        pinned = frozenset(identity.public_of(k) for k in signers.values())
        return SiteTrust(signers[node], rules_from_policy(pol, pinned), pol, uploads[node])

    trust.signers = signers  # type: ignore[attr-defined]  # tests reach in to play a hostile node
    trust.uploads = uploads  # type: ignore[attr-defined]
    return trust


def flatten(arrays: ArrayRecord) -> np.ndarray:
    """Float64 concatenation of an ArrayRecord's arrays in sorted-name order, shape [P] (the materialised
    form of :func:`update_pieces`; the secure round itself never builds it)."""
    return np.concatenate([arrays[name].numpy().astype(np.float64).reshape(-1) for name in sorted(arrays)])


def update_pieces(new_arrays: ArrayRecord, global_arrays: ArrayRecord, context: Context) -> Iterator[np.ndarray]:
    """The site's update ``new - global`` as float64, flat in sorted-name order, one cache-sized piece at a
    time (shape [<= CHUNK_WORDS] each), through :func:`prepare_update`.

    The pieces concatenate to ``flatten(new_arrays) - flatten(global_arrays)`` exactly (float32 -> float64 is
    exact and the difference is taken in float64), without the three whole-model float64 copies that takes.
    One buffer is reused: a piece is valid until the next is asked for.

    Raises
    ------
    SecAggError
        A parameter whose size differs between the trained and the global weights.
    """
    buf = np.empty(CHUNK_WORDS, dtype=np.float64)
    for name in sorted(global_arrays):
        new = array_view(new_arrays[name]).reshape(-1)
        old = array_view(global_arrays[name]).reshape(-1)
        if new.size != old.size:
            raise SecAggError(f"the trained parameter {name!r} has {new.size} values, the global one {old.size}")
        for start in range(0, new.size, CHUNK_WORDS):
            out = buf[: min(CHUNK_WORDS, new.size - start)]
            np.subtract(new[start : start + CHUNK_WORDS], old[start : start + CHUNK_WORDS], out=out,
                        dtype=np.float64)
            yield prepare_update(out, context)


def prepare_update(update: np.ndarray, context: Context) -> np.ndarray:
    """Hook between the site's update (a piece of the flat delta, [N]) and masking: identity.

    Client-level DP (``privacy.client-level``) has already happened inside ``train_fn``
    (xr0_core/privacy/private_round.py: clip to C, then the site's *full* noise ``N(0, (sigma C)^2)``, recorded in
    its ledger), so ``update`` is already private when it arrives here. The full noise per site (rather than
    ``sigma / sqrt(n)`` each) keeps each hospital's guarantee independent of the other sites' honesty and of
    dropouts; the split is a possible optimisation once the accountant models it. It sees the update piece by
    piece (:func:`update_pieces`), so anything put here must be elementwise.
    """
    return update


def _load(context: Context, params_round: int | None = None) -> ClientSession:
    rec = context.state.config_records.get(STATE_KEY)
    if rec is None or "session" not in rec:
        raise SecAggError("no secure-aggregation session for this round (setup message missing or lost)")
    session = ClientSession.from_bytes(rec["session"])
    if params_round is not None and session.params.server_round != params_round:
        raise SecAggError(f"the secure-aggregation session is for round {session.params.server_round}, "
                          f"not {params_round}")
    return session


def _store(context: Context, session: ClientSession | None) -> None:
    if session is None:
        if STATE_KEY in context.state.config_records:
            del context.state.config_records[STATE_KEY]
        return
    context.state.config_records[STATE_KEY] = ConfigRecord({"session": session.to_bytes()})


def _rec(msg: Message) -> ConfigRecord:
    if REC not in msg.content.config_records:
        raise SecAggError(f"message {msg.metadata.message_type} lacks its {REC!r} ConfigRecord")
    return msg.content.config_records[REC]


def _round_of(rec: ConfigRecord) -> int:
    return int(rec["round"])


def _ints(rec: ConfigRecord, key: str) -> list[int]:
    return [int(v) for v in rec[key]] if key in rec else []


def _refresh(session: ClientSession, trust: SiteTrust) -> None:
    """Keys pinned since setup (simulated hospitals publish theirs at their own setup) count from now on;
    thresholds were checked at setup and stay."""
    session.rules = trust.rules


def make_handlers(train_fn: TrainFn, trust_fn: TrustFn = site_trust) -> dict[str, Callable[[Message, Context], Message]]:
    """The five stage handlers around the site's plain ``train_fn``, keyed by message action."""

    def setup(msg: Message, context: Context) -> Message:
        rec = _rec(msg)
        trust = trust_fn(context)
        params = RoundParams.from_flat(rec)
        if params.run_id != int(msg.metadata.run_id):
            raise SecAggError("the setup message names another Flower run than the one it came in; refusing")
        # A second session for a round this site already uploaded for is refused before any key is made.
        trust.uploads.check(params.run_key, params.server_round)
        node = int(msg.metadata.dst_node_id)
        graph = graph_from_flat(rec) if "graph-nodes" in rec else None
        if graph is None:
            raise SecAggError("the setup message lacks the round's neighbour graph")
        if "neighbours" in rec and sorted(_ints(rec, "neighbours")) != sorted(graph.get(node, ())):
            raise SecAggError("the setup message's neighbour list differs from the graph")
        session = ClientSession.start(params, node, graph, trust.rules)
        pk = session.announce(trust.signer)
        _store(context, session)
        pinned = len(trust.rules.pinned) - 1 if trust.rules.pinned is not None else 0  # peers, not itself
        return Message(RecordDict({REC: ConfigRecord({"c-pk": pk.c, "s-pk": pk.s, "sign-pk": pk.sign,
                                                      "key-sig": pk.sig, "pinned": pinned})}), reply_to=msg)

    def share_keys(msg: Message, context: Context) -> Message:
        rec = _rec(msg)
        session = _load(context, _round_of(rec))
        _refresh(session, trust_fn(context))
        ids = _ints(rec, "peers")
        cols = [rec[k] if k in rec else [] for k in ("c-pk", "s-pk", "sign-pk", "key-sig")]
        if any(len(c) != len(ids) for c in cols):
            raise SecAggError("the share-keys message's key lists do not match its peer list")
        peers = {v: PeerKeys(c, s_, g, sig) for v, c, s_, g, sig in zip(ids, *cols)}
        cts = session.share_keys(peers)
        commit = session.b_commitment()
        _store(context, session)
        dsts = sorted(cts)
        return Message(RecordDict({REC: ConfigRecord({"dst": dsts, "ct": [cts[d] for d in dsts],
                                                      "b-commit": commit})}), reply_to=msg)

    def train_secagg(msg: Message, context: Context) -> Message:
        rec = _rec(msg)
        session = _load(context, _round_of(rec))
        trust = trust_fn(context)
        _refresh(session, trust)
        # The session is bound to the training round it masks: the train instruction must be for that round
        # of that run (else one session could carry another round's training, or one round train twice).
        config = msg.content.config_records.get(keys.CONFIG)
        if (config is None or int(config.get(keys.SERVER_ROUND, -1)) != session.params.server_round
                or str(config.get("run-key", "")) != session.params.run_key):
            raise SecAggError("the train instruction is for another round or run than this secure-aggregation "
                              "session; refusing")
        trust.uploads.check(session.params.run_key, session.params.server_round)
        srcs = _ints(rec, "src")
        # Shares first: a site that cannot get t - 1 authentic shares drops out before spending a round training.
        cts = list(rec["ct"]) if srcs else []
        if len(cts) != len(srcs):
            raise SecAggError("the train message's share lists do not match")
        rejected = session.receive_shares(dict(zip(srcs, cts)))
        if rejected:
            log.warning("shares from nodes %s failed authentication; masking without them", rejected)
        _store(context, session)
        reply = train_fn(msg, context)
        if reply.has_error():
            return reply
        global_arrays = msg.content.array_records[keys.ARRAYS]
        new_arrays = reply.content.array_records[keys.ARRAYS]
        if sorted(new_arrays) != sorted(global_arrays):
            raise SecAggError("the trained weights do not have the global model's parameter names")
        metrics = dict(reply.content.metric_records[keys.METRICS])
        num_examples = float(metrics.pop(keys.NUM_EXAMPLES))  # travels only inside the masked vector
        num_values = sum(int(np.prod(global_arrays[k].shape)) for k in global_arrays)
        upload = session.mask_pieces(update_pieces(new_arrays, global_arrays, context), num_values, num_examples,
                                     scratch=True)  # update_pieces' buffer is refilled for each piece
        del new_arrays
        release(reply.content)  # the trained weights are masked: free them now (wire.release)
        # Recorded durably before the masked words leave: a restart or a second session cannot upload again.
        trust.uploads.record(session.params.run_key, session.params.server_round)
        _store(context, session)
        if upload.weight_capped:
            log.info("num-examples %g exceeds secagg.weight-cap %g: this site's weight counts as the cap",
                     num_examples, session.params.weight_cap)
        private = any(k in metrics for k in ("epsilon", "privacy-budget"))
        out = {k: v for k, v in metrics.items() if trust.policy.secagg_metric_allowed(k, private)}
        kept = sorted(set(metrics) - set(out))
        if kept:
            log.info("metrics kept at the site under secure aggregation: %s", ", ".join(kept))
        out[CLIPPED] = int(upload.clipped)
        words = Array(dtype=str(upload.words.dtype), shape=tuple(upload.words.shape), stype=NUMPY_STYPE,
                      data=upload.npy)
        del upload  # the message holds the upload's only copy (written once, wire.NpyWriter)
        content = RecordDict({MASKED: ArrayRecord({WORDS: words}), keys.METRICS: MetricRecord(out)})
        if rejected:
            content[REC] = ConfigRecord({"rejected": rejected})
        return Message(content, reply_to=msg)

    def consistency(msg: Message, context: Context) -> Message:
        rec = _rec(msg)
        session = _load(context, _round_of(rec))
        trust = trust_fn(context)
        _refresh(session, trust)
        try:
            u1 = _ints(rec, "announced")
            cols = [list(rec[k]) if k in rec else [] for k in ("a-c-pk", "a-s-pk", "a-sign-pk", "a-key-sig")]
            if not u1 or any(len(c) != len(u1) for c in cols):
                raise SecAggError("the consistency message's transcript key lists do not match its node list")
            announced = {v: PeerKeys(c, s_, g, sig) for v, c, s_, g, sig in zip(u1, *cols)}
            sig = session.consistency(_ints(rec, "shared"), _ints(rec, "uploaded"), announced, trust.signer)
        except SecAggError:
            _store(context, None)  # a refused round's secrets go now
            raise
        _store(context, session)
        return Message(RecordDict({REC: ConfigRecord({"view-sig": sig})}), reply_to=msg)

    def unmask(msg: Message, context: Context) -> Message:
        rec = _rec(msg)
        session = _load(context, _round_of(rec))
        try:
            _refresh(session, trust_fn(context))
            signers = _ints(rec, "signers")
            keys_, sigs = list(rec.get("sign-pk", [])), list(rec.get("view-sig", []))
            if len(keys_) != len(signers) or len(sigs) != len(signers):
                raise SecAggError("the unmask message's signature lists do not match its signer list")
            signatures = {v: (k, g) for v, k, g in zip(signers, keys_, sigs)}
            b_shares, sk_shares = session.unmask(_ints(rec, "alive"), _ints(rec, "dropped"), signatures)
        finally:
            _store(context, None)  # one unmask per round, successful or refused: the secrets go now
        out: dict = {"b-src": sorted(b_shares), "b-share": [b_shares[v] for v in sorted(b_shares)]}
        if sk_shares:
            out.update({"sk-src": sorted(sk_shares), "sk-share": [sk_shares[v] for v in sorted(sk_shares)]})
        return Message(RecordDict({REC: ConfigRecord(out)}), reply_to=msg)

    return {SETUP: setup, SHARE_KEYS: share_keys, TRAIN_ACTION: train_secagg, CONSISTENCY: consistency,
            UNMASK: unmask}


def register(app: ClientApp, train_fn: TrainFn, trust_fn: TrustFn = site_trust) -> None:
    """Add the secure-aggregation handlers to ``app``; ``train_fn`` is the site's plain train handler,
    ``trust_fn`` gives the site's signing key, rules and policy (default: from its state folder)."""
    h = make_handlers(train_fn, trust_fn)
    app.query(SETUP)(h[SETUP])
    app.query(SHARE_KEYS)(h[SHARE_KEYS])
    app.train(TRAIN_ACTION)(h[TRAIN_ACTION])
    app.query(CONSISTENCY)(h[CONSISTENCY])
    app.query(UNMASK)(h[UNMASK])
