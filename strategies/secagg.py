"""Server stages of secure aggregation (SecAgg+) over Flower's Grid, plus the strategy that uses them.

How it plugs in without copying ``Strategy.start``: Flower's loop sends the round's train messages with
``grid.send_and_receive`` and hands the replies to ``aggregate_train``. :class:`SecAggGrid` wraps the real
Grid; when it is handed train messages it runs the SecAgg+ stages as separate Message API exchanges
(setup -> share keys -> train + masked upload -> consistency -> unmask; message types in
``client/secagg.py``) and returns ONE :class:`SecAggRoundResult` holding the unmasked weighted mean update
(never any single site's update). :class:`XR0SecAggFedAvg` turns that into the new global weights. Any other
message (evaluation) passes through untouched.

What the coordinator can no longer check under secure aggregation: per-reply validation (keys, shapes,
finite values, update norms) of ``strategies/validate.py`` is impossible on masked vectors. What remains:
every upload must have the right length and word type; the client refuses NaN/inf and clips values to
the declared range (counted); a site's weight is capped at ``secagg.weight-cap``; the unmasked sum must be
one honest clients can produce (``quantize.check_sum``), else the round is skipped.

Robustness: nothing a site sends ends the run. A reply that cannot be read drops that site at that stage
(reason in the round record); a malformed or non-fitting share is ignored (its holder named) and other
share subsets are tried; anything else unexpected skips the round with the exception's text as reason.

Per-stage timeouts: ``secagg.stage-timeout`` for the four crypto stages, ``federation.round-timeout``
for the training stage. A site missing at any stage but consistency is a dropout; its masks are removed
with its neighbours' shares. Fewer than the threshold left at any stage, a split uploader graph, a missing
signature, too few good shares, or an out-of-range sum: the round is skipped (global weights unchanged) and
the reason lands in the round's record (``reason``) and log.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from xr0_core import record_keys as keys
from xr0_core.record_keys import NUM_EXAMPLES
from xr0_core.secagg.protocol import (PeerKeys, RoundParams, SecAggAbort, SecAggError, default_threshold,
                                      neighbour_graph)
from xr0_core.secagg.server import ServerRound, SumOutOfRange
from xr0_core.secagg.quantize import QuantSpec, decode_mean, mean_error_bound, setting_warnings
from xr0_core.secagg.wire import (CLIPPED, CONSISTENCY, MASKED, PINNED, REC, SETUP, SHARE_KEYS, TRAIN_ACTION,
                                  UNMASK, WEIGHT_CAPPED, WORDS, array_view, graph_to_flat, release)

from .fedavg_ssl import (FormedAggregate, ReplyError, SiteOutcome, XR0FedAvg, finite_metrics,
                         partition_id_of, short_reason)
from .validate import reply_sender, sent_to

log = logging.getLogger(__name__)

TRAIN = "train"
SESSION_BYTES = 16  # a fresh random session id per secure round (sites refuse shorter ones)


PLAIN_WEIGHT_CAP = 50_000.0  # secagg.weight-cap = 0 without DP: sites weigh by their image counts
PRIVATE_WEIGHT_CAP = 1.0  # secagg.weight-cap = 0 under DP: sites send their declared weight (1 by default)


def weight_cap_for(configured: float, private: bool) -> float:
    """The weight cap a round uses: ``secagg.weight-cap`` when set, else (0, the default) one that fits the
    weights sites actually send.

    Why it matters (issue 22, the all-zero round): a site's update is encoded at a resolution of
    ``R / (L * num-examples / cap)`` per coordinate. Under DP every site sends its *declared* weight
    (``release.declared-examples``, 1 by default), so with the old fixed cap of 50000 each site used 1/50000
    of the ring: a step of 1.4e-4 with 3 sites, 32 bits and R = 2. The last round of a cosine schedule trains
    at ``train.min-lr`` (1e-6), its update rounded to exactly zero at every site, and the round "completed"
    with the global weights unchanged while every site paid epsilon. With the cap at the declared weight the
    step is ``R / L`` (2.8e-9 there).
    """
    if configured > 0:
        return float(configured)
    return PRIVATE_WEIGHT_CAP if private else PLAIN_WEIGHT_CAP


def error_warning(bound: float, rms: float, quant: QuantSpec, weight_cap: float, total_weight: float) -> str:
    """What to change when secure aggregation's rounding error is large against the mean update: only the
    settings that would help (not "use 32 bits" when the ring already has 32)."""
    ratio = bound / rms if rms > 0 else math.inf
    fixes = []
    if quant.bits < 32:
        fixes.append("secagg.quant-bits = 32")
    if total_weight > 0 and weight_cap > total_weight:
        fixes.append(f"secagg.weight-cap = {total_weight:.3g} (the sites' total weight this round; now {weight_cap:g})")
    fixes.append(f"a smaller secagg.quant-range (now {quant.value_range:g}) if the updates stay well inside it")
    return (f"the quantization error bound {bound:.3g} is {ratio:.2g}x the mean update's RMS {rms:.3g}: small "
            "updates vanish; use " + " or ".join(fixes))


@dataclass(frozen=True)
class SecAggSettings:
    """``[secagg]`` config as the server uses it (see xr0_core/config.py SecAggConfig)."""

    num_neighbours: int = 0  # 0: all-to-all
    threshold: int = 0  # 0: strict majority of each client's share holders
    quant_bits: int = 32
    quant_range: float = 2.0
    weight_cap: float = PLAIN_WEIGHT_CAP
    stage_timeout: float = 600.0
    client_noise_std: float = 0.0  # sigma * C of client-level DP at each site (for the quantization warning)

    @classmethod
    def from_config(cls, sa: Any, privacy: Any = None) -> "SecAggSettings":
        noise = 0.0
        private = privacy is not None and bool(getattr(privacy, "enabled", False) or
                                               getattr(privacy, "client_level", False))
        if privacy is not None and getattr(privacy, "client_level", False):
            noise = float(privacy.client_noise_multiplier) * float(privacy.client_clip)
        cap = weight_cap_for(float(getattr(sa, "weight_cap", 0.0)), private)
        return cls(int(sa.num_neighbours), int(sa.threshold), int(sa.quant_bits), float(sa.quant_range),
                   cap, float(sa.stage_timeout), noise)


@dataclass
class SecAggRoundResult:
    """What the secure round tells the strategy: the mean update of the survivors, nothing per site."""

    server_round: int
    sites: list[SiteOutcome]
    mean_delta: dict[str, np.ndarray] | None  # name -> float64 array, shape of the parameter
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    fault: str = ""  # "unattributable": the unmasked sum was out of range (no single site can be blamed)
    involved: list[int] = field(default_factory=list)  # the uploaders whose sum it was


def _flat_names(arrays: ArrayRecord) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(arrays[name].shape)) for name in sorted(arrays)]


class SecAggGrid(Grid):
    """A Grid that runs train rounds as SecAgg+ rounds (all other traffic passes through).

    Parameters
    ----------
    grid : Grid
        The real Grid (deployment or simulation).
    settings : SecAggSettings
    rng : random.Random, optional
        Neighbour-graph placement; default ``random.SystemRandom()`` (unpredictable to clients).
    """

    def __init__(self, grid: Grid, settings: SecAggSettings, rng: random.Random | None = None) -> None:
        self.inner = grid
        self.settings = settings
        self.rng = rng or random.SystemRandom()
        self.last_stage_seconds: dict[str, float] = {}
        self._round: ServerRound | None = None

    # ---- plain delegation ------------------------------------------------------------------------
    def set_run(self, run):  # type: ignore[override]
        return self.inner.set_run(run)

    @property
    def run(self):  # type: ignore[override]
        return self.inner.run

    def create_message(self, *args, **kwargs):  # type: ignore[override]
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Any]:
        msgs = list(messages)
        if not msgs or any(m.metadata.message_type != TRAIN for m in msgs):
            return self.inner.send_and_receive(msgs, timeout=timeout)
        return [self.secure_round(msgs, timeout)]

    # ---- the secure round ------------------------------------------------------------------------
    def _exchange(self, stage: str, contents: Mapping[int, RecordDict], message_type: str, group: str,
                  timeout: float | None, outcome: dict[int, SiteOutcome],
                  on_batch: Callable[[dict[int, Message]], None] | None = None) -> dict[int, Message]:
        """Send one stage's messages; return ok replies by node, marking errors / silence in ``outcome``.

        With ``on_batch``, replies are handed over as they arrive (push, then pull until all answered or the
        timeout) and not kept: the masked uploads of a round are summed one batch at a time, so the coordinator
        never holds every site's upload at once. A Grid without push / pull gets one batch from
        ``send_and_receive``. Returns the ok replies not handed to ``on_batch`` (none when it is given).
        """
        t0 = time.perf_counter()
        out = [Message(c, dst_node_id=node, message_type=message_type, group_id=group) for node, c in contents.items()]
        good: dict[int, Message] = {}
        answered: set[int] = set()

        def sort(replies: Iterable[Message], senders: Mapping[str, int]) -> dict[int, Message]:
            batch: dict[int, Message] = {}
            for reply in replies:
                node = reply_sender(reply, senders) if senders else int(reply.metadata.src_node_id)
                if node not in contents or node in answered:
                    continue
                answered.add(node)
                if reply.has_error():
                    outcome.setdefault(node, SiteOutcome(node, "failed", f"{stage}: " + short_reason(
                        reply.error.reason or f"error code {reply.error.code}")))
                else:
                    batch[node] = reply
            return batch

        ids: list[str] | None = None
        if on_batch is not None:
            try:
                ids = list(self.inner.push_messages(out))
            except NotImplementedError:
                ids = None
        if ids is None:
            batch = sort(self.inner.send_and_receive(out, timeout=timeout), sent_to(out))
            if on_batch is not None:
                on_batch(batch)
            else:
                good = batch
        else:
            senders = sent_to(out)
            del out  # the pushed messages (and the global weights they carry) are the Grid's now
            pending = set(ids)
            end = None if timeout is None else time.time() + timeout
            interval = float(getattr(self.inner, "pull_interval", 0.1))
            while pending:
                replies = list(self.inner.pull_messages(pending))
                pending -= {r.metadata.reply_to_message_id for r in replies}
                batch = sort(replies, senders)
                arrived = bool(replies)
                del replies
                if batch:
                    on_batch(batch)
                    batch.clear()
                if not pending or (end is not None and time.time() >= end):
                    break
                if not arrived:
                    if getattr(self.inner, "answers_immediately", False):
                        break  # an in-process Grid: what did not answer now never will (a silent node)
                    time.sleep(interval)
        for node in contents:
            if node not in answered and node not in outcome:
                outcome[node] = SiteOutcome(node, "dropped", f"{stage}: no reply within the timeout")
        self.last_stage_seconds[stage] = time.perf_counter() - t0
        return good

    def secure_round(self, train_msgs: list[Message], train_timeout: float | None) -> SecAggRoundResult:
        """Run setup, share keys, masked training, consistency and unmasking for the nodes of ``train_msgs``.

        Never raises for anything a site sends: a malformed reply drops that site (or, where its upload is
        already in the sum, is ignored and noted), and a round that cannot finish safely is skipped with the
        reason in the result (global weights unchanged).
        """
        first = train_msgs[0].content
        config = first.config_records[keys.CONFIG]
        global_arrays = first.array_records[keys.ARRAYS]
        server_round = int(config[keys.SERVER_ROUND])
        nodes = sorted({int(m.metadata.dst_node_id) for m in train_msgs})
        outcome: dict[int, SiteOutcome] = {}
        site_metrics: dict[int, dict[str, float]] = {}
        self._round = None  # set by _stages as soon as the round exists: its stage log names the dropouts
        try:
            rnd, mean, total_wq, params = self._stages(server_round, config, global_arrays, nodes, train_timeout,
                                                       outcome, site_metrics, int(train_msgs[0].metadata.run_id))
        except SumOutOfRange as exc:  # unattributable: reported with the uploaders, counted once per set
            res = self._skipped(server_round, nodes, outcome, self._round, site_metrics, str(exc))
            involved = set(exc.uploaders)
            res.fault, res.involved = "unattributable", sorted(involved)
            res.sites = [SiteOutcome(s.node_id, "skipped", "the unmasked sum of this round's uploads was out of range "
                                     f"(one of {len(involved)} uploaders sent words outside the encoding)", s.metrics)
                         if s.node_id in involved else s for s in res.sites]
            return res
        except SecAggError as exc:  # SecAggAbort: too few / corrupt; SecAggError: the round cannot run as set
            return self._skipped(server_round, nodes, outcome, self._round, site_metrics, str(exc))
        except Exception as exc:  # noqa: BLE001 - one site's bytes must never end a multi-day run
            log.exception("round %d: secure aggregation failed unexpectedly", server_round)
            return self._skipped(server_round, nodes, outcome, self._round, site_metrics,
                                 f"unexpected error in secure aggregation ({type(exc).__name__}: {exc})")
        n_up = len(rnd.uploaded)
        layout = _flat_names(global_arrays)
        mean_delta: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in layout:
            size = int(np.prod(shape))
            mean_delta[name] = mean[offset : offset + size].reshape(shape)
            offset += size
        metrics = {
            keys.NUM_EXAMPLES: total_wq / params.quant.levels * params.weight_cap,
            "secagg-uploads": float(n_up),
            "secagg-dropped": float(len(nodes) - n_up),
            "secagg-clipped": float(rnd.clipped),
            "secagg-clipped-fraction": float(rnd.clipped) / max(1.0, float(n_up * (rnd.num_words - 1))),
            "secagg-threshold": float(params.threshold),
            "secagg-error-bound": mean_error_bound(params.quant, n_up, total_wq),
        }
        warnings = setting_warnings(params.quant, params.weight_cap, self.settings.client_noise_std)
        if metrics["secagg-clipped-fraction"] > 0.01:
            warnings.append(f"{100 * metrics['secagg-clipped-fraction']:.1f} % of update coordinates were clipped to "
                            f"secagg.quant-range {params.quant.value_range:g}; raise it")
        rms = float(np.sqrt(np.dot(mean, mean) / mean.size)) if mean.size else 0.0
        metrics["secagg-error-to-update"] = metrics["secagg-error-bound"] / rms if rms > 0 else float("inf")
        if metrics["secagg-error-to-update"] > 0.1:
            warnings.append(error_warning(metrics["secagg-error-bound"], rms, params.quant, params.weight_cap,
                                          metrics[keys.NUM_EXAMPLES]))
        for w in warnings:
            log.warning("round %d: secure aggregation: %s", server_round, w)
        sites = self._sites(nodes, outcome, rnd.log, site_metrics, set(rnd.uploaded))
        return SecAggRoundResult(server_round, sites, mean_delta, metrics, warnings=warnings)

    def _skipped(self, server_round, nodes, outcome, rnd, site_metrics, reason) -> SecAggRoundResult:
        log.warning("round %d: secure aggregation skipped: %s", server_round, reason)
        stage_log = rnd.log if rnd is not None else None
        return SecAggRoundResult(server_round, self._sites(nodes, outcome, stage_log, site_metrics, None), None,
                                 {"secagg-skipped": 1.0}, reason)

    def _parse(self, stage: str, replies: Mapping[int, Message], outcome: dict[int, SiteOutcome],
               parse: Callable[[Message], Any]) -> dict[int, Any]:
        """``parse(reply)`` per node; a reply it cannot read (missing key, wrong type, empty bytes, a bad
        metric: anything ``parse`` raises) drops that node at this stage with the reason."""
        out = {}
        for u, r in replies.items():
            try:
                out[u] = parse(r)
            except ReplyError as exc:
                outcome[u] = SiteOutcome(u, "dropped", f"{stage}: {exc}")
            except Exception as exc:  # noqa: BLE001 - one hospital's bytes never end the round
                what = f"missing {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else type(exc).__name__
                outcome[u] = SiteOutcome(u, "dropped", f"{stage}: malformed reply ({what})")
        return out

    def _stages(self, server_round, config, global_arrays, nodes, train_timeout, outcome, site_metrics, run_id=0):
        s = self.settings
        group = str(server_round)
        layout = _flat_names(global_arrays)
        num_words = sum(int(np.prod(shape)) for _, shape in layout) + 1
        graph = neighbour_graph(nodes, s.num_neighbours, self.rng)
        holders = min(len(v) for v in graph.values()) + 1
        t = s.threshold or default_threshold(holders)
        if t > holders or 2 * t <= max(len(v) for v in graph.values()) + 1:
            raise SecAggError(f"secagg.threshold {t} must be a strict majority of the {holders} share holders per "
                              "client (neighbours + itself): sites refuse anything else; set it to 0 (automatic)")
        params = RoundParams(str(config["run-key"]), server_round, t,
                             QuantSpec(s.quant_bits, s.quant_range, len(nodes)), s.weight_cap,
                             session_id=os.urandom(SESSION_BYTES), run_id=run_id)
        rnd = ServerRound(params, graph, num_words)
        self._round = rnd

        # stage 0: setup
        base = {**params.to_flat(), **graph_to_flat(graph)}
        contents = {u: RecordDict({REC: ConfigRecord({**base, "neighbours": list(graph[u])})}) for u in nodes}
        replies = self._exchange("setup", contents, f"query.{SETUP}", group, s.stage_timeout, outcome)

        def announce(r: Message) -> tuple[PeerKeys, float]:
            rec = r.content.config_records[REC]
            pk = PeerKeys(rec["c-pk"], rec["s-pk"], rec["sign-pk"], rec["key-sig"])
            if not all(isinstance(x, bytes) for x in (pk.c, pk.s, pk.sign, pk.sig)):
                raise TypeError("keys are not bytes")
            pinned = rec.get("pinned", 0)
            if isinstance(pinned, bool) or not isinstance(pinned, int) or pinned < 0:
                raise ReplyError("setup: pinned must be a count >= 0")
            return pk, float(pinned)

        announced = self._parse("setup", replies, outcome, announce)
        for u, (_, pinned) in announced.items():  # the report shows which hospitals pinned their peers' keys
            site_metrics.setdefault(u, {})[PINNED] = pinned
        rnd.record_keys({u: pk for u, (pk, _) in announced.items()})

        # stage 1: share keys
        contents = {}
        for u in rnd.keys:
            peers = rnd.peer_keys(u)
            ids = sorted(peers)
            contents[u] = RecordDict({REC: ConfigRecord({
                "round": server_round, "peers": ids, "c-pk": [peers[v].c for v in ids],
                "s-pk": [peers[v].s for v in ids], "sign-pk": [peers[v].sign for v in ids],
                "key-sig": [peers[v].sig for v in ids]})})
        replies = self._exchange("share-keys", contents, f"query.{SHARE_KEYS}", group, s.stage_timeout, outcome)

        def shares(r: Message):
            rec = r.content.config_records[REC]
            dst, ct = [int(v) for v in rec["dst"]], list(rec["ct"])
            if len(dst) != len(ct):
                raise ValueError("dst / ct lengths differ")
            return dict(zip(dst, ct)), rec["b-commit"]

        parsed = self._parse("share-keys", replies, outcome, shares)
        rnd.record_shares({u: p[0] for u, p in parsed.items()}, {u: p[1] for u, p in parsed.items()})

        # stage 2: train + masked upload (the site's training happens here)
        contents = {}
        for u in rnd.shares:
            incoming = rnd.shares_for(u)
            srcs = sorted(incoming)
            contents[u] = RecordDict({
                keys.ARRAYS: global_arrays, keys.CONFIG: config,
                REC: ConfigRecord({"round": server_round, "src": srcs, "ct": [incoming[v] for v in srcs]}),
            })

        def upload(r: Message):
            arrays = r.content.array_records[MASKED]
            metrics = r.content.metric_records.get(keys.METRICS) or {}
            clipped = metrics.get(CLIPPED, 0)
            if not isinstance(clipped, (int, float)) or not math.isfinite(clipped) or clipped < 0:
                raise ValueError("bad clipped count")
            rec = r.content.config_records.get(REC)
            rejected = [int(v) for v in rec["rejected"]] if rec is not None and "rejected" in rec else []
            clear = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            partition_id_of(clear)  # a hostile partition-id drops the site here, before its upload counts
            clear, _ = finite_metrics(clear)
            return array_view(arrays[WORDS]), int(clipped), clear, rejected

        def take(batch: dict[int, Message]) -> None:
            """Sum one batch of masked uploads; the batch's messages are let go right after."""
            got = self._parse("masked-upload", batch, outcome, upload)
            left_out = rnd.add_batch({u: (g[0], g[1], g[3]) for u, g in got.items()})
            for u, (_, _, metrics, _) in got.items():
                if u not in left_out:  # a site whose upload is kept out by a rejected share reports nothing
                    site_metrics.setdefault(u, {}).update(metrics)
            got.clear()
            if not getattr(self.inner, "keep", False):  # a Grid that keeps its traffic (tests) holds them anyway
                for reply in batch.values():  # summed: its words go now, not at the next cyclic collection
                    release(reply.content, [MASKED])
            batch.clear()

        self._exchange("masked-upload", contents, f"{TRAIN}.{TRAIN_ACTION}", group, train_timeout, outcome,
                       on_batch=take)
        rnd.close_uploads()

        # stage 3a: consistency (uploaders sign the whole session's transcript before anyone reveals a share)
        shared, uploaded = rnd.view()
        u1 = sorted(rnd.announced)
        transcript = {"announced": u1, "a-c-pk": [rnd.announced[v].c for v in u1],
                      "a-s-pk": [rnd.announced[v].s for v in u1], "a-sign-pk": [rnd.announced[v].sign for v in u1],
                      "a-key-sig": [rnd.announced[v].sig for v in u1]}
        contents = {u: RecordDict({REC: ConfigRecord({"round": server_round, "shared": shared,
                                                      "uploaded": uploaded, **transcript})}) for u in rnd.uploaded}
        replies = self._exchange("consistency", contents, f"query.{CONSISTENCY}", group, s.stage_timeout, outcome)
        rnd.record_signatures(self._parse("consistency", replies, outcome,
                                          lambda r: r.content.config_records[REC]["view-sig"]))

        # stage 3b: unmask
        signers = sorted(rnd.signatures)
        bundle = {"signers": signers, "sign-pk": [rnd.signatures[v][0] for v in signers],
                  "view-sig": [rnd.signatures[v][1] for v in signers]}
        contents = {}
        for u in rnd.uploaded:
            alive, dropped = rnd.unmask_request(u)
            contents[u] = RecordDict({REC: ConfigRecord({"round": server_round, "alive": alive,
                                                         "dropped": dropped, **bundle})})
        replies = self._exchange("unmask", contents, f"query.{UNMASK}", group, s.stage_timeout, outcome)

        def unmask_reply(r: Message):
            rec = r.content.config_records[REC]
            b = dict(zip((int(v) for v in rec["b-src"]), rec["b-share"]))
            sk = dict(zip((int(v) for v in rec["sk-src"]), rec["sk-share"])) if "sk-src" in rec else {}
            return b, sk

        unmask: dict = {}
        for u, r in replies.items():
            try:
                unmask[u] = unmask_reply(r)
            except Exception as exc:  # noqa: BLE001 - a malformed reply is ignored; other holders' shares serve
                rnd.log.note(u, f"unmask: malformed reply ignored ({type(exc).__name__})")
        t0 = time.perf_counter()
        try:
            total = rnd.finish(unmask)
        except SumOutOfRange:
            raise
        except SecAggAbort as exc:  # say why the shares are missing: sites that refused to unmask, and why
            refused = [u for u in rnd.uploaded if u in outcome and outcome[u].reason.startswith("unmask")]
            if refused:
                raise SecAggAbort(f"{len(refused)} uploader(s) refused to unmask ({outcome[refused[0]].reason}); "
                                  f"{exc}") from None
            raise
        mean, total_wq = decode_mean(total, params.quant)
        self.last_stage_seconds["unmask-compute"] = time.perf_counter() - t0
        return rnd, mean, total_wq, params

    @staticmethod
    def _sites(nodes, outcome, stage_log, site_metrics, uploaded) -> list[SiteOutcome]:
        drops = stage_log.dropped if stage_log is not None else {}
        notes = stage_log.notes if stage_log is not None else {}
        sites = []
        for u in nodes:
            m = site_metrics.get(u, {})
            note = "; ".join(notes.get(u, []))
            if uploaded is not None and u in uploaded:
                sites.append(SiteOutcome(u, "ok", note, m))
            elif u in outcome:
                o = outcome[u]
                sites.append(SiteOutcome(u, o.status, "; ".join(x for x in (o.reason, note) if x), m))
            elif u in drops:
                stage, why = drops[u]
                sites.append(SiteOutcome(u, "dropped", "; ".join(x for x in (f"{stage}: {why}", note) if x), m))
            else:
                sites.append(SiteOutcome(u, "dropped", "; ".join(
                    x for x in ("round skipped before its upload counted", note) if x), m))
        return sites


def _mean_metrics(sites: list[SiteOutcome]) -> dict[str, float]:
    """Unweighted mean of the ok sites' scalar metrics (their weights are secret under secure aggregation)."""
    ok = [s for s in sites if s.status == "ok"]
    out: dict[str, float] = {}
    for name in sorted({k for s in ok for k in s.metrics} - {"partition-id", CLIPPED, WEIGHT_CAPPED, NUM_EXAMPLES,
                                                          PINNED}):
        vals = [s.metrics[name] for s in ok if name in s.metrics and math.isfinite(s.metrics[name])]
        if vals:
            out[name] = float(np.mean(vals))
    return out


class XR0SecAggFedAvg(XR0FedAvg):
    """:class:`XR0FedAvg` for rounds run through a :class:`SecAggGrid`: only :meth:`form_aggregate` differs.

    It receives one :class:`SecAggRoundResult` instead of per-site replies; the mean it forms is
    ``global + mean update`` (the server optimizer, reply counting, logging and the round's record are the
    base class's). Round metrics: the sites' scalar metrics averaged without weights (``num-examples`` per site
    is secret; only its sum is known), plus ``secagg-uploads``, ``secagg-dropped``, ``secagg-clipped``,
    ``secagg-clipped-fraction``, ``secagg-error-bound``, ``secagg-error-to-update``, ``secagg-skipped``; a
    skipped round's reason, any quantization warnings and an unattributable fault (the unmasked sum out of
    range, with the uploaders involved) go to the round record.
    """

    secure = True

    def form_aggregate(self, global_round: int, replies: Iterable[Any]) -> FormedAggregate:
        results = [r for r in replies if isinstance(r, SecAggRoundResult)]
        if len(results) != 1:
            raise RuntimeError("secure aggregation is on but the strategy did not get a SecAggGrid result; "
                               "wrap the grid with strategies.secagg.SecAggGrid")
        res = results[0]
        metrics = _mean_metrics(res.sites)
        metrics.update(res.metrics)
        mean = None
        if res.mean_delta is not None:
            assert self._sent is not None  # aggregate_train checked it
            mean = {k: (self._sent[k].astype(np.float64) + res.mean_delta[k]).astype(self._sent[k].dtype)
                    for k in self._sent}
            if sum(s.status == "ok" for s in res.sites) < self.min_replies:
                metrics["secagg-skipped"] = 1.0
        return FormedAggregate(res.sites, mean, metrics, res.skipped_reason, list(res.warnings), res.fault,
                               list(res.involved), delta=res.mean_delta,
                               resolution=float(res.metrics.get("secagg-error-bound", 0.0)))
