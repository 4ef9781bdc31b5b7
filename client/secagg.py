"""Client stages of secure aggregation (SecAgg+ over Flower's Message API).

Message types (sent by ``strategies/secagg.py``; routed by Flower's ClientApp on ``<category>.<action>``):

- ``query.secagg_setup``      -> fresh per-round X25519 key pairs; reply: the two public keys
- ``query.secagg_share_keys`` -> neighbours' public keys in; encrypted Shamir shares out
- ``train.secagg``            -> the normal train instruction + shares addressed to this site; the site
  trains exactly as for a plain round (the ``train_fn`` given to :func:`register`), then replies with the
  *masked* quantized update instead of its weights, and scalar metrics without ``num-examples``
- ``query.secagg_unmask``     -> alive / dropped neighbours in; shares of their secrets out

The round's secrets (private keys, self-mask seed, shares received) live in ``context.state`` under
:data:`STATE_KEY` between stages and are deleted after the unmask stage; they are never logged and never
leave the site in clear (the audit log records only the outgoing masked words' hash and sizes).

Where differential privacy plugs in: :func:`prepare_update` is the one place between "the site's update"
and "the vector that gets masked". Sample-level DP already happened inside ``train_fn``; client-level DP
clips the update's L2 norm there and adds this site's share of the Gaussian noise (sigma / sqrt(n) each,
so the unmasked sum carries noise of std sigma: see docs/secure-aggregation.md).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from xr0_core import keys
from xr0_core.secagg.protocol import ClientSession, RoundParams, SecAggError
from xr0_core.secagg.wire import CLIPPED, MASKED, REC, SETUP, SHARE_KEYS, TRAIN_ACTION, UNMASK, WEIGHT_CAPPED, WORDS

STATE_KEY = "xr0-secagg"  # context.state ConfigRecord holding this round's ClientSession

TrainFn = Callable[[Message, Context], Message]


def flatten(arrays: ArrayRecord) -> np.ndarray:
    """Float64 concatenation of an ArrayRecord's arrays in sorted-name order, shape [P]."""
    return np.concatenate([arrays[name].numpy().astype(np.float64).reshape(-1) for name in sorted(arrays)])


def prepare_update(update: np.ndarray, context: Context) -> np.ndarray:
    """Hook between the site's update (flat delta, [P]) and masking: identity.

    Client-level DP (``privacy.client-level``) has already happened inside ``train_fn``
    (xr0_core/privacy/round.py: clip to C, then the site's *full* noise ``N(0, (sigma C)^2)``, recorded in
    its ledger), so ``update`` is already private when it arrives here. The full noise per site (rather than
    ``sigma / sqrt(n)`` each) keeps each hospital's guarantee independent of the other sites' honesty and of
    dropouts; the split is a possible optimisation once the accountant models it.
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


def setup(msg: Message, context: Context) -> Message:
    rec = _rec(msg)
    params = RoundParams.from_flat(rec)
    session = ClientSession.start(params, int(msg.metadata.dst_node_id), [int(v) for v in rec["neighbours"]])
    _store(context, session)
    c_pk, s_pk = session.public_keys()
    return Message(RecordDict({REC: ConfigRecord({"c-pk": c_pk, "s-pk": s_pk})}), reply_to=msg)


def share_keys(msg: Message, context: Context) -> Message:
    rec = _rec(msg)
    session = _load(context, _round_of(rec))
    ids = [int(v) for v in rec["peers"]]
    peers = {v: (c, s) for v, c, s in zip(ids, rec["c-pk"], rec["s-pk"])}
    cts = session.share_keys(peers)
    _store(context, session)
    dsts = sorted(cts)
    return Message(RecordDict({REC: ConfigRecord({"dst": dsts, "ct": [cts[d] for d in dsts]})}), reply_to=msg)


def make_train(train_fn: TrainFn) -> Callable[[Message, Context], Message]:
    """The ``train.secagg`` handler around the site's plain ``train_fn``."""

    def train_secagg(msg: Message, context: Context) -> Message:
        rec = _rec(msg)
        session = _load(context, _round_of(rec))
        srcs = [int(v) for v in rec["src"]] if "src" in rec else []
        # Shares first: a site that cannot vouch for its peers drops out before spending a round training.
        session.receive_shares(dict(zip(srcs, rec["ct"] if srcs else [])))
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
        update = prepare_update(flatten(new_arrays) - flatten(global_arrays), context)
        upload = session.mask(update, num_examples)
        _store(context, session)
        metrics[CLIPPED] = int(upload.clipped)
        metrics[WEIGHT_CAPPED] = int(upload.weight_capped)
        content = RecordDict({MASKED: ArrayRecord({WORDS: Array(upload.words)}), keys.METRICS: MetricRecord(metrics)})
        return Message(content, reply_to=msg)

    return train_secagg


def unmask(msg: Message, context: Context) -> Message:
    rec = _rec(msg)
    session = _load(context, _round_of(rec))
    alive = [int(v) for v in rec["alive"]]
    dropped = [int(v) for v in rec["dropped"]] if "dropped" in rec else []
    try:
        b_shares, sk_shares = session.unmask(alive, dropped)
    finally:
        _store(context, None)  # one unmask per round, successful or refused: the secrets go now
    out: dict = {"b-src": sorted(b_shares), "b-share": [b_shares[v] for v in sorted(b_shares)]}
    if sk_shares:
        out.update({"sk-src": sorted(sk_shares), "sk-share": [sk_shares[v] for v in sorted(sk_shares)]})
    return Message(RecordDict({REC: ConfigRecord(out)}), reply_to=msg)


def register(app: ClientApp, train_fn: TrainFn) -> None:
    """Add the secure-aggregation handlers to ``app``; ``train_fn`` is the site's plain train handler."""
    app.query(SETUP)(setup)
    app.query(SHARE_KEYS)(share_keys)
    app.train(TRAIN_ACTION)(make_train(train_fn))
    app.query(UNMASK)(unmask)
