"""XR-0 federated strategy: FedAvg over the shared SSL parameter set, with reply validation, a server
optimizer, resumable round numbering and per-site bookkeeping.

Client-side contract (what a ClientApp must do to take part):

- ``train`` messages carry ``ArrayRecord "arrays"`` (the shared set: student backbone + DINO/iBOT heads +
  mask token, float32) and ``ConfigRecord "config"`` with ``server-round`` (global round, 1-based, continues
  after a resume), ``global-step`` (first SSL step of this round), ``total-steps`` (schedule length),
  ``local-steps``, ``run-seed``, ``run-key`` and ``config-hash``.
- A reply carries exactly one ``ArrayRecord "arrays"`` with the same keys, shapes and dtypes, and one
  ``MetricRecord "metrics"`` holding ``num-examples`` (weight of the site in the mean) and scalar metrics.
  A site that refuses (e.g. privacy budget spent) replies with an error message whose reason says why.
- ``evaluate`` messages carry the same arrays; replies hold a ``MetricRecord`` only.

Replies that fail validation (keys, shapes, dtype, non-finite values, optional update-norm bound) are
dropped with a logged reason; a round with fewer than ``min_replies`` valid replies keeps the previous
global weights (Flower's ``Strategy.start`` keeps ``arrays`` when ``aggregate_train`` returns ``None``).
A hospital that was sent a message and did not answer within the round timeout is listed as ``dropped``
with that reason (train and evaluate). With ``preflight`` every sampled hospital is first asked
``query.preflight`` (:meth:`XR0FedAvg.run_preflight`): those that refuse are left out of the round (and of its
secure-aggregation set) with their reason, and a round with too few ready hospitals is skipped before anyone
trains. An aggregate that is exactly zero, non-finite or vanishingly small
(:func:`strategies.validate.aggregate_problem`) is a failed round with its reason, never a silent no-op.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from xr0_core import record_keys as keys
from xr0_core.secagg.wire import npy_view

from .aggregate import ServerOptimizer, global_norm, weighted_mean
from .canonical import canonical_order
from .eval_aggregate import pooled_metrics
from .validate import aggregate_problem, check_update, reply_sender, sent_to

log = logging.getLogger(__name__)


@dataclass
class SiteOutcome:
    """What one site did in one round, as the server saw it."""

    node_id: int
    status: str  # "ok" | "dropped" | "failed" | "empty" (evaluation: nothing to evaluate there)
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundOutcome:
    """One finished round: aggregate metrics, per-site outcomes, and whether the global model moved."""

    server_round: int
    kind: str  # "train" | "evaluate"
    sites: list[SiteOutcome]
    metrics: dict[str, float]
    updated: bool
    arrays: ArrayRecord | None = None  # new global weights (train rounds that updated)
    reason: str = ""  # why a round that did not update was skipped
    warnings: list[str] = field(default_factory=list)  # settings that cost accuracy (secure aggregation)
    # "unattributable": the round failed in a way no single hospital can be blamed for (a masked aggregate out
    # of range); ``involved`` names the nodes whose uploads were in it (server/run.py counts it once per set).
    fault: str = ""
    involved: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {
            "round": self.server_round,
            "kind": self.kind,
            "updated": self.updated,
            "metrics": self.metrics,
            "sites": [s.__dict__ for s in self.sites],
        }
        if self.reason:
            out["reason"] = self.reason
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.fault:
            out["fault"] = self.fault
            out["involved"] = list(self.involved)
        return out


@dataclass
class FormedAggregate:
    """What a strategy's :meth:`XR0FedAvg.form_aggregate` hook makes of one round's replies.

    ``mean``: the new global weights before the server optimizer (name -> array), or None when the round
    cannot update (then ``reason`` says why).
    """

    sites: list[SiteOutcome]
    mean: dict[str, np.ndarray] | None
    metrics: dict[str, float]
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    fault: str = ""
    involved: list[int] = field(default_factory=list)
    delta: dict[str, np.ndarray] | None = None  # mean - global in float64 when known exactly (else computed)
    resolution: float = 0.0  # per-coordinate error of the mean (secure aggregation's quantization bound)


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: arr.numpy() for name, arr in record.items()}


def reply_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A reply's arrays as read-only views of its bytes (:func:`xr0_core.secagg.wire.npy_view`, the one reader
    of ``.npy`` bytes, which the secure-aggregation path uses too): what ``Array.numpy()`` returns, without
    copying every hospital's 8 MB once more (they are only read: checked, hashed, averaged)."""
    return {name: npy_view(arr.data) for name, arr in record.items()}


def numpy_to_arrays(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(text: str, limit: int = 300) -> str:
    """One line from a client error: Flower / Ray wrap the site's exception in pages of traceback."""
    text = _ANSI.sub("", text or "").strip()
    if "Message:" in text:
        text = text.rsplit("Message:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = (lines[-1] if lines else "no reason given").rstrip("'>").strip()
    return line[:limit]


def _scalar_metrics(record: MetricRecord | None) -> dict[str, float]:
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class ReplyError(ValueError):
    """A reply field a hospital sent that cannot be used; the message is the reason in the round's record."""


def partition_id_of(metrics: dict[str, float]) -> int | None:
    """The ``partition-id`` metric (simulation only) as a whole number >= 0, None when absent.

    Raises
    ------
    ReplyError
        Present but NaN, infinite, negative or fractional (a hostile value must not reach the coordinator's
        naming of hospitals).
    """
    if "partition-id" not in metrics:
        return None
    pid = metrics["partition-id"]
    if not (isinstance(pid, (int, float)) and math.isfinite(pid) and pid >= 0 and float(pid).is_integer()):
        raise ReplyError(f"partition-id must be a whole number >= 0, got {pid!r}")
    return int(pid)


def finite_metrics(metrics: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """``metrics`` without NaN / infinite values, and the names left out (they never enter a round's means)."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    return {k: v for k, v in metrics.items() if k not in bad}, bad


def reply_metrics(record: MetricRecord | None) -> tuple[dict[str, float], str]:
    """One reply's scalar metrics, checked: (finite metrics, a note naming the ones left out).

    Raises
    ------
    ReplyError
        A ``partition-id`` that is not a whole number >= 0.
    """
    metrics = _scalar_metrics(record)
    partition_id_of(metrics)
    metrics, bad = finite_metrics(metrics)
    return metrics, (f"non-finite metrics ignored: {', '.join(bad[:5])}" if bad else "")


def weighted_metrics(sites: list[SiteOutcome], weight_key: str = keys.NUM_EXAMPLES) -> dict[str, float]:
    """Example-weighted mean of every metric the ok sites reported (``num-examples`` is summed)."""
    ok = [s for s in sites if s.status == "ok"]
    total = sum(s.metrics.get(weight_key, 0.0) for s in ok)
    out: dict[str, float] = {weight_key: total}
    names = sorted({k for s in ok for k in s.metrics} - {weight_key, "partition-id"})
    for name in names:
        pairs = [(s.metrics[name], s.metrics.get(weight_key, 0.0)) for s in ok if name in s.metrics]
        wsum = sum(w for _, w in pairs)
        if wsum > 0:
            out[name] = sum(v * w for v, w in pairs) / wsum
    return out


class XR0FedAvg(FedAvg):
    """FedAvg for XR-0 pretraining (see module docstring for the client contract).

    Parameters
    ----------
    round_offset : int
        Rounds already completed before this ``start`` (resume); Flower's local round ``r`` is global
        round ``round_offset + r``.
    local_steps, total_rounds : int
        Define ``global-step = (round - 1) * local_steps`` and ``total-steps = total_rounds * local_steps``.
    run_seed : int
    run_key : str
        Identifies the run across resumes (sites key their local SSL state by it).
    config_hash : str
    server_optimizer : ServerOptimizer
    min_replies : int
        Fewer valid replies than this and the global weights stay as they were.
    max_update_norm : float
        Optional L2 bound on ``reply - global`` (0 disables).
    max_update_ratio : float
        L2 bound on ``reply - global`` as a multiple of the global weights' norm (0 disables).
    fraction_train, fraction_evaluate : float
        Share of the connected hospitals Flower samples for a train / evaluate round (``federation.fraction-*``;
        ``int(connected * fraction)``, never fewer than ``min_replies``): a large federation trains a fraction
        of its hospitals per round.
    min_available : int
        Hospitals that must be connected before a round samples (Flower waits for them; 0: ``min_replies``).
    weight_cap : float
        A reply's ``num-examples`` above this counts as this (0 disables): a hostile hospital claiming 1e300
        examples gets no more weight than a large honest one.
    evaluate_every : int
        Federated evaluation after every K-th round and after the last (0: last only).
    on_round_end : callable, optional
        Called with each :class:`RoundOutcome` (train and evaluate): the server app checkpoints there.
    round_timeout : float
        ``federation.round-timeout`` (only to word the reason of a hospital that did not answer in time).
    client_clip : float
        Client-level DP's clip norm (0: off): an aggregate far below it is a failed round.
    preflight : bool
        Ask every sampled hospital ``query.preflight`` before the round (:meth:`run_preflight`): the ones that
        refuse are left out with their reason, and a round with fewer ready hospitals than :attr:`min_ready`
        is skipped before anyone trains.
    min_ready : int
        Fewest ready hospitals a round needs (0: ``min_replies``; a secure round needs at least 2).
    """

    secure = False  # whether train rounds are secure-aggregation rounds (the preflight tells the sites)

    def __init__(
        self,
        *,
        round_offset: int,
        local_steps: int,
        total_rounds: int,
        run_seed: int,
        run_key: str,
        config_hash: str,
        server_optimizer: ServerOptimizer,
        min_replies: int = 1,
        max_update_norm: float = 0.0,
        max_update_ratio: float = 0.0,
        weight_cap: float = 0.0,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_available: int = 0,
        evaluate_every: int = 0,
        on_round_end: Callable[[RoundOutcome], None] | None = None,
        round_timeout: float = 0.0,
        client_clip: float = 0.0,
        preflight: bool = False,
        min_ready: int = 0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_replies,
            min_evaluate_nodes=min_replies,
            min_available_nodes=max(min_available, min_replies),
            weighted_by_key=keys.NUM_EXAMPLES,
            arrayrecord_key=keys.ARRAYS,
            configrecord_key=keys.CONFIG,
        )
        self.round_offset = round_offset
        self.local_steps = local_steps
        self.total_rounds = total_rounds
        self.run_seed = run_seed
        self.run_key = run_key
        self.config_hash = config_hash
        self.server_optimizer = server_optimizer
        self.min_replies = min_replies
        self.max_update_norm = max_update_norm
        self.max_update_ratio = max_update_ratio
        self.weight_cap = weight_cap
        self.evaluate_every = evaluate_every
        self.on_round_end = on_round_end
        self.round_timeout = round_timeout
        self.client_clip = client_clip
        self.preflight = preflight
        self.min_ready = max(min_ready, min_replies)
        self._preflight_sites: list[SiteOutcome] = []  # hospitals left out of this round by their preflight
        self._preflight_reason = ""  # set when the round was skipped at preflight (nobody trained)
        self._sent: dict[str, np.ndarray] | None = None
        self._train_nodes: list[int] = []  # hospitals sent this round's train message
        self._eval_nodes: list[int] = []  # hospitals sent this round's evaluate message
        self._train_msgs: list[Message] = []  # the messages themselves (ids set once pushed): who a reply is for
        self._eval_msgs: list[Message] = []

    def global_round(self, server_round: int) -> int:
        return self.round_offset + server_round

    def round_config(self, global_round: int, base: ConfigRecord) -> ConfigRecord:
        """A fresh ConfigRecord for ``global_round`` (never mutates the caller's ``base``)."""
        cfg = ConfigRecord(dict(base))
        cfg[keys.SERVER_ROUND] = global_round
        cfg[keys.GLOBAL_STEP] = (global_round - 1) * self.local_steps
        cfg[keys.TOTAL_STEPS] = self.total_rounds * self.local_steps
        cfg[keys.LOCAL_STEPS] = self.local_steps
        cfg[keys.RUN_SEED] = self.run_seed
        cfg["run-key"] = self.run_key
        cfg[keys.CONFIG_HASH] = self.config_hash
        return cfg

    # ---- training --------------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        g = self.global_round(server_round)
        self._sent = arrays_to_numpy(arrays)
        self._sent_norm = global_norm(self._sent) if self.max_update_ratio > 0 else None  # once, not per reply
        messages = list(super().configure_train(g, arrays, self.round_config(g, config), grid))
        self._preflight_sites, self._preflight_reason = [], ""
        if self.preflight and messages:
            messages = self.run_preflight(g, messages, grid)
        self._train_nodes = sorted({int(m.metadata.dst_node_id) for m in messages})
        self._train_msgs = messages
        return messages

    def run_preflight(self, global_round: int, messages: list[Message], grid: Grid) -> list[Message]:
        """Ask the hospitals of ``messages`` whether they take part (``query.preflight``: the round's config and
        whether it is secure); return the train messages of those that are ready.

        A refusal (error reply) is a ``failed`` outcome with the hospital's reason, silence a ``dropped`` one;
        both are added to the round's record. With fewer ready hospitals than :attr:`min_ready` nobody is
        sent anything more: the round is skipped (its reason says so) before any set-up or training, so no
        hospital pays epsilon for a round that cannot produce a model.
        """
        config = messages[0].content.config_records[keys.CONFIG]
        asks = [Message(RecordDict({keys.CONFIG: config, keys.PREFLIGHT: ConfigRecord({keys.SECURE: self.secure})}),
                        dst_node_id=int(m.metadata.dst_node_id), message_type=f"query.{keys.PREFLIGHT}",
                        group_id=str(global_round)) for m in messages]
        replies = grid.send_and_receive(asks, timeout=self.round_timeout or None)
        senders = sent_to(asks)
        nodes = sorted({int(m.metadata.dst_node_id) for m in messages})
        ready: set[int] = set()
        left_out: list[SiteOutcome] = []
        for reply in replies:
            node = reply_sender(reply, senders) if senders else _src_node(reply)
            if node is None or node not in nodes or node in ready:
                continue
            if reply.has_error():
                left_out.append(SiteOutcome(node, "failed", "preflight: " + short_reason(
                    reply.error.reason or f"error code {reply.error.code}")))
            elif _is_ready(reply):
                ready.add(node)
            else:
                left_out.append(SiteOutcome(node, "dropped", "preflight: the reply does not say ready"))
        left_out += self.silent_sites(nodes, ready | {s.node_id for s in left_out}, "preflight")
        for s in left_out:
            log.warning("round %d: node %d left out at preflight: %s", global_round, s.node_id, s.reason)
        if len(ready) < self.min_ready:
            self._preflight_reason = (
                f"preflight: {len(ready)} of {len(nodes)} hospitals can take part, fewer than the {self.min_ready} "
                "this round needs; skipped before any hospital trained (no epsilon was charged)")
            left_out += [SiteOutcome(n, "skipped", "ready, but the round was skipped before training: too few "
                                     "hospitals could take part") for n in sorted(ready)]
            self._preflight_sites = left_out
            return []
        self._preflight_sites = left_out
        return [m for m in messages if int(m.metadata.dst_node_id) in ready]

    def silent_sites(self, nodes: Iterable[int], answered: Iterable[int], what: str) -> list[SiteOutcome]:
        """A ``dropped`` outcome for every hospital of ``nodes`` that did not answer (Flower's
        ``send_and_receive`` simply leaves out replies missing at the timeout)."""
        seen = set(answered)
        limit = f"federation.round-timeout ({self.round_timeout:g} s)" if self.round_timeout else "the round timeout"
        return [SiteOutcome(n, "dropped", f"{what}: no reply within {limit}") for n in nodes if n not in seen]

    def vanished(self, mean_delta: dict[str, np.ndarray], resolution: float = 0.0) -> str:
        """The reason an aggregated update must not count as a trained round ("" when it may)."""
        return aggregate_problem(mean_delta, self._sent or {}, resolution=resolution,
                                 client_clip=self.client_clip) or ""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Count, log and record the round around :meth:`form_aggregate` (the one hook strategies override),
        then apply the server optimizer to the mean it formed."""
        g = self.global_round(server_round)
        if self._sent is None:
            raise RuntimeError("aggregate_train called before configure_train")
        t0 = time.perf_counter()
        if self._preflight_reason:  # nobody was sent the round: its record is the preflight's
            agg = FormedAggregate(list(self._preflight_sites), None, {}, self._preflight_reason)
        else:
            agg = self.form_aggregate(g, replies)
            agg.sites = agg.sites + [s for s in self._preflight_sites if s.node_id not in {x.node_id for x in agg.sites}]
        for s in agg.sites:
            if s.status != "ok":
                log.warning("round %d: node %d %s: %s", g, s.node_id, s.status, s.reason)
        ok = sum(s.status == "ok" for s in agg.sites)
        metrics = dict(agg.metrics)
        metrics.update({
            "replies-ok": float(ok),
            "replies-dropped": float(sum(s.status == "dropped" for s in agg.sites)),
            "replies-failed": float(sum(s.status == "failed" for s in agg.sites)),
        })
        new_arrays: ArrayRecord | None = None
        reason = agg.reason
        if agg.mean is not None and ok >= self.min_replies:
            delta = agg.delta if agg.delta is not None else {
                k: agg.mean[k].astype(np.float64) - self._sent[k] for k in self._sent}
            reason = self.vanished(delta, resolution=agg.resolution)
            if reason:
                log.warning("round %d failed: %s", g, reason)
            else:
                new_arrays = numpy_to_arrays(self.server_optimizer.apply(self._sent, agg.mean))
        elif agg.mean is not None or not reason:
            reason = f"{ok} valid replies < federation.min-replies {self.min_replies}"
            log.warning("round %d: %s; global weights unchanged", g, reason)
        else:
            log.warning("round %d: %s", g, reason)
        metrics["server-aggregate-seconds"] = time.perf_counter() - t0
        outcome = RoundOutcome(g, "train", agg.sites, metrics, updated=new_arrays is not None, arrays=new_arrays,
                               reason=reason, warnings=list(agg.warnings), fault=agg.fault,
                               involved=list(agg.involved))
        if self.on_round_end is not None:
            self.on_round_end(outcome)
        return new_arrays, MetricRecord(metrics)

    def form_aggregate(self, global_round: int, replies: Iterable[Message]) -> FormedAggregate:
        """Plain FedAvg: check every reply on its own (:meth:`_check_reply`), then the example-weighted mean
        of the accepted ones, summed in a canonical order."""
        sites: list[SiteOutcome] = []
        accepted: list[tuple[dict[str, np.ndarray], float]] = []
        senders = sent_to(self._train_msgs)
        for msg in replies:
            node = reply_sender(msg, senders) if senders else _src_node(msg)
            if node is None:
                continue  # not a reply from a node we asked: nothing to attribute it to
            if msg.has_error():
                sites.append(SiteOutcome(node, "failed", short_reason(msg.error.reason or f"error code {msg.error.code}")))
                continue
            outcome, update = self._check_reply(node, msg)
            sites.append(outcome)
            if update is not None:
                accepted.append((update, outcome.metrics[keys.NUM_EXAMPLES]))
        sites += self.silent_sites(self._train_nodes, [s.node_id for s in sites], "train")
        metrics = weighted_metrics(sites)
        if not accepted:
            return FormedAggregate(sites, None, metrics)
        # Replies arrive in network order; summing in a canonical order makes the aggregate (and so a resumed
        # run) bit-for-bit reproducible (strategies/canonical.py: a sampled key, full digests only on ties).
        accepted = canonical_order(accepted)
        mean = weighted_mean([u for u, _ in accepted], [n for _, n in accepted])
        return FormedAggregate(sites, mean, metrics)

    def _check_reply(self, node: int, msg: Message) -> tuple[SiteOutcome, dict[str, np.ndarray] | None]:
        """One reply, every field parsed inside this function: anything unusable drops this hospital for the
        round with the reason (never an exception out of the round)."""
        try:
            return self._check_reply_fields(node, msg)
        except ReplyError as exc:
            return SiteOutcome(node, "dropped", str(exc)), None
        except Exception as exc:  # noqa: BLE001 - one hospital's bytes (e.g. an empty Array) never end the run
            return SiteOutcome(node, "dropped", f"malformed reply ({type(exc).__name__}: {short_reason(str(exc), 120)})"), None

    def _check_reply_fields(self, node: int, msg: Message) -> tuple[SiteOutcome, dict[str, np.ndarray] | None]:
        content = msg.content
        array_records = list(content.array_records.values())
        metric_records = list(content.metric_records.values())
        if len(array_records) != 1 or len(metric_records) != 1:
            return SiteOutcome(node, "dropped", "reply must hold exactly one ArrayRecord and one MetricRecord"), None
        metrics, note = reply_metrics(metric_records[0])
        n = metrics.get(keys.NUM_EXAMPLES, float("nan"))
        if not (math.isfinite(n) and n > 0):
            return SiteOutcome(node, "dropped", f"num-examples must be a positive number, got {n}", metrics), None
        if self.weight_cap > 0 and n > self.weight_cap:
            metrics[keys.NUM_EXAMPLES] = float(self.weight_cap)
            note = "; ".join(x for x in (note, f"num-examples {n:.3g} counted as federation.weight-cap "
                                                f"{self.weight_cap:g}") if x)
        update = reply_arrays(array_records[0])
        reason = check_update(update, self._sent or {}, self.max_update_norm, self.max_update_ratio,
                              reference_norm=getattr(self, "_sent_norm", None))
        if reason is not None:
            return SiteOutcome(node, "dropped", reason, metrics), None
        return SiteOutcome(node, "ok", note, metrics), update

    # ---- evaluation ------------------------------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        g = self.global_round(server_round)
        last = g == self.total_rounds
        periodic = self.evaluate_every > 0 and g % self.evaluate_every == 0
        if not (last or periodic):
            self._eval_nodes, self._eval_msgs = [], []
            return []
        messages = list(super().configure_evaluate(g, arrays, self.round_config(g, config), grid))
        self._eval_nodes = sorted({int(m.metadata.dst_node_id) for m in messages})
        self._eval_msgs = messages
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        g = self.global_round(server_round)
        sites: list[SiteOutcome] = []
        senders = sent_to(self._eval_msgs)
        for msg in replies:
            node = reply_sender(msg, senders) if senders else _src_node(msg)
            if node is None:
                continue
            if msg.has_error():
                sites.append(SiteOutcome(node, "failed", short_reason(msg.error.reason or f"error code {msg.error.code}")))
                continue
            try:
                metric_records = list(msg.content.metric_records.values())
                metrics = _scalar_metrics(metric_records[0]) if metric_records else {}
                partition_id_of(metrics)
            except Exception as exc:  # noqa: BLE001 - one hospital's reply never ends the run
                sites.append(SiteOutcome(node, "dropped", f"malformed evaluation reply ({short_reason(str(exc), 120)})"))
                continue
            n = metrics.get(keys.NUM_EXAMPLES)
            if n is not None and n == 0:  # a hospital without labelled held-out images: nothing went wrong
                sites.append(SiteOutcome(node, "empty", "nothing to evaluate", metrics))
                continue
            if n is None or not n >= 0 or not math.isfinite(n):
                sites.append(SiteOutcome(node, "dropped", "evaluation reply without a valid num-examples", metrics))
                continue
            sites.append(SiteOutcome(node, "ok", "", metrics))
        sites += self.silent_sites(self._eval_nodes, [s.node_id for s in sites], "evaluate")
        if not sites:
            return None
        # Per-task example weights (<task>/num-examples), per-site numbers stay in `sites`.
        metrics = pooled_metrics([s.metrics for s in sites if s.status == "ok"])
        metrics.setdefault(keys.NUM_EXAMPLES, 0.0)
        if self.on_round_end is not None:
            self.on_round_end(RoundOutcome(g, "evaluate", sites, metrics, updated=False))
        return MetricRecord(metrics)


def _is_ready(msg: Message) -> bool:
    """A preflight reply that says ready: a MetricRecord with ``ready`` = 1."""
    try:
        return any(rec.get(keys.READY) == 1 for rec in msg.content.metric_records.values())
    except Exception:  # noqa: BLE001 - a hostile reply is simply not ready
        return False


def _src_node(msg: Message) -> int | None:
    """``src_node_id`` as an int (replies handed in without the round's messages, as unit tests do)."""
    try:
        return int(msg.metadata.src_node_id)
    except (AttributeError, TypeError, ValueError):
        return None
