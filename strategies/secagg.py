"""Server stages of secure aggregation (SecAgg+) over Flower's Grid, plus the strategy that uses them.

How it plugs in without copying ``Strategy.start``: Flower's loop sends the round's train messages with
``grid.send_and_receive`` and hands the replies to ``aggregate_train``. :class:`SecAggGrid` wraps the real
Grid; when it is handed train messages it runs the four SecAgg+ stages as separate Message API exchanges
(setup -> share keys -> train + masked upload -> unmask; message types in ``client/secagg.py``) and
returns ONE :class:`SecAggRoundResult` holding the unmasked weighted mean update (never any single site's
update). :class:`XR0SecAggFedAvg` turns that into the new global weights. Any other message (evaluation)
passes through untouched.

What the coordinator can no longer check under secure aggregation: per-reply validation (keys, shapes,
finite values, update norms) of ``strategies/validate.py`` is impossible on masked vectors. What remains:
every upload must have the right length and word type; the client refuses NaN/inf and clips values to
the declared range (counted); a site's weight is capped at ``secagg.weight-cap`` (counted).

Per-stage timeouts: ``secagg.stage-timeout`` for the three crypto stages, ``federation.round-timeout``
for the training stage. A site missing at any stage is a dropout; its masks are removed with its
neighbours' shares. Fewer than the threshold left at any stage, or too few shares to rebuild a mask: the
round is skipped (global weights unchanged) and the reason lands in the round's metrics and log.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from xr0_core import keys
from xr0_core.secagg.protocol import (RoundParams, SecAggAbort, SecAggError, ServerRound, default_threshold,
                                      neighbour_graph)
from xr0_core.secagg.quantize import QuantSpec, decode_mean, mean_error_bound
from xr0_core.secagg.wire import CLIPPED, MASKED, REC, SETUP, SHARE_KEYS, TRAIN_ACTION, UNMASK, WEIGHT_CAPPED, WORDS

from .fedavg_ssl import RoundOutcome, SiteOutcome, XR0FedAvg, numpy_to_arrays, short_reason

log = logging.getLogger(__name__)

TRAIN = "train"


@dataclass(frozen=True)
class SecAggSettings:
    """``[secagg]`` config as the server uses it (see xr0_core/config.py SecAggConfig)."""

    num_neighbours: int = 0  # 0: all-to-all
    threshold: int = 0  # 0: strict majority of each client's share holders
    quant_bits: int = 32
    quant_range: float = 2.0
    weight_cap: float = 50_000.0
    stage_timeout: float = 600.0

    @classmethod
    def from_config(cls, sa: Any) -> "SecAggSettings":
        return cls(int(sa.num_neighbours), int(sa.threshold), int(sa.quant_bits), float(sa.quant_range),
                   float(getattr(sa, "weight_cap", cls.weight_cap)), float(sa.stage_timeout))


@dataclass
class SecAggRoundResult:
    """What the secure round tells the strategy: the mean update of the survivors, nothing per site."""

    server_round: int
    sites: list[SiteOutcome]
    mean_delta: dict[str, np.ndarray] | None  # name -> float64 array, shape of the parameter
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_reason: str = ""


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
                  timeout: float | None, outcome: dict[int, SiteOutcome]) -> dict[int, Message]:
        """Send one stage's messages; return ok replies by node, marking errors / silence in ``outcome``."""
        t0 = time.perf_counter()
        out = [Message(c, dst_node_id=node, message_type=message_type, group_id=group) for node, c in contents.items()]
        replies = self.inner.send_and_receive(out, timeout=timeout)
        good: dict[int, Message] = {}
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if node not in contents:
                continue
            if reply.has_error():
                outcome.setdefault(node, SiteOutcome(node, "failed", f"{stage}: " + short_reason(
                    reply.error.reason or f"error code {reply.error.code}")))
            else:
                good[node] = reply
        for node in contents:
            if node not in good and node not in outcome:
                outcome[node] = SiteOutcome(node, "dropped", f"{stage}: no reply within the timeout")
        self.last_stage_seconds[stage] = time.perf_counter() - t0
        return good

    def secure_round(self, train_msgs: list[Message], train_timeout: float | None) -> SecAggRoundResult:
        """Run setup, share keys, masked training and unmasking for the nodes of ``train_msgs``."""
        first = train_msgs[0].content
        config = first.config_records[keys.CONFIG]
        global_arrays = first.array_records[keys.ARRAYS]
        server_round = int(config[keys.SERVER_ROUND])
        group = str(server_round)
        nodes = sorted({int(m.metadata.dst_node_id) for m in train_msgs})
        s = self.settings
        outcome: dict[int, SiteOutcome] = {}
        site_metrics: dict[int, dict[str, float]] = {}
        layout = _flat_names(global_arrays)
        num_words = sum(int(np.prod(shape)) for _, shape in layout) + 1
        try:
            graph = neighbour_graph(nodes, s.num_neighbours, self.rng)
            holders = min(len(v) for v in graph.values()) + 1
            t = s.threshold or default_threshold(holders)
            if t > holders:
                raise SecAggAbort(f"secagg.threshold {t} exceeds the {holders} share holders per client "
                                  "(neighbours + itself); lower it or raise secagg.num-neighbours")
            params = RoundParams(str(config["run-key"]), server_round, t,
                                 QuantSpec(s.quant_bits, s.quant_range, len(nodes)), s.weight_cap)
            rnd = ServerRound(params, graph, num_words)

            # stage 0: setup
            base = params.to_flat()
            contents = {u: RecordDict({REC: ConfigRecord({**base, "neighbours": list(graph[u])})}) for u in nodes}
            replies = self._exchange("setup", contents, f"query.{SETUP}", group, s.stage_timeout, outcome)
            pks = {}
            for u, r in replies.items():
                rec = r.content.config_records.get(REC)
                if rec is None or not isinstance(rec.get("c-pk"), bytes) or not isinstance(rec.get("s-pk"), bytes):
                    outcome[u] = SiteOutcome(u, "dropped", "setup: malformed reply")
                    continue
                pks[u] = (rec["c-pk"], rec["s-pk"])
            rnd.record_keys(pks)

            # stage 1: share keys
            contents = {}
            for u in rnd.keys:
                peers = rnd.peer_keys(u)
                ids = sorted(peers)
                contents[u] = RecordDict({REC: ConfigRecord({"round": server_round, "peers": ids,
                                                             "c-pk": [peers[v][0] for v in ids],
                                                             "s-pk": [peers[v][1] for v in ids]})})
            replies = self._exchange("share-keys", contents, f"query.{SHARE_KEYS}", group, s.stage_timeout, outcome)
            shares = {}
            for u, r in replies.items():
                rec = r.content.config_records.get(REC)
                if rec is None or "dst" not in rec:
                    outcome[u] = SiteOutcome(u, "dropped", "share-keys: malformed reply")
                    continue
                shares[u] = dict(zip((int(v) for v in rec["dst"]), rec["ct"]))
            rnd.record_shares(shares)

            # stage 2: train + masked upload (the site's training happens here)
            contents = {}
            for u in rnd.shares:
                incoming = rnd.shares_for(u)
                srcs = sorted(incoming)
                contents[u] = RecordDict({
                    keys.ARRAYS: global_arrays, keys.CONFIG: config,
                    REC: ConfigRecord({"round": server_round, "src": srcs, "ct": [incoming[v] for v in srcs]}),
                })
            replies = self._exchange("masked-upload", contents, f"{TRAIN}.{TRAIN_ACTION}", group, train_timeout,
                                     outcome)
            for u, r in replies.items():
                arrays = r.content.array_records.get(MASKED)
                metrics = r.content.metric_records.get(keys.METRICS)
                if arrays is None or WORDS not in arrays:
                    outcome[u] = SiteOutcome(u, "dropped", "masked-upload: no masked words in the reply")
                    continue
                words = arrays[WORDS].numpy()
                clipped = int(metrics.get(CLIPPED, 0)) if metrics else 0
                rnd.add_upload(u, words, clipped)
                site_metrics[u] = {k: float(v) for k, v in (metrics or {}).items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
                del words, arrays  # the server keeps only the running ring sum
            rnd.close_uploads()

            # stage 3: unmask
            contents = {}
            for u in rnd.uploaded:
                alive, dropped = rnd.unmask_request(u)
                contents[u] = RecordDict({REC: ConfigRecord({"round": server_round, "alive": alive,
                                                             "dropped": dropped})})
            replies = self._exchange("unmask", contents, f"query.{UNMASK}", group, s.stage_timeout, outcome)
            unmask = {}
            for u, r in replies.items():
                rec = r.content.config_records.get(REC)
                if rec is None or "b-src" not in rec:
                    continue
                b = dict(zip((int(v) for v in rec["b-src"]), rec["b-share"]))
                sk = dict(zip((int(v) for v in rec["sk-src"]), rec["sk-share"])) if "sk-src" in rec else {}
                unmask[u] = (b, sk)
            t0 = time.perf_counter()
            total = rnd.finish(unmask)
            mean, total_wq = decode_mean(total, params.quant)
            self.last_stage_seconds["unmask-compute"] = time.perf_counter() - t0
        except SecAggAbort as exc:
            reason = str(exc)
            log.warning("round %d: secure aggregation skipped: %s", server_round, reason)
            sites = self._sites(nodes, outcome, {}, site_metrics, None)
            return SecAggRoundResult(server_round, sites, None, {"secagg-skipped": 1.0}, reason)
        except SecAggError as exc:  # configuration problems: the round cannot run as configured
            reason = str(exc)
            log.warning("round %d: secure aggregation skipped: %s", server_round, reason)
            return SecAggRoundResult(server_round, self._sites(nodes, outcome, {}, site_metrics, None), None,
                                     {"secagg-skipped": 1.0}, reason)
        n_up = len(rnd.uploaded)
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
            "secagg-threshold": float(t),
            "secagg-error-bound": mean_error_bound(params.quant, n_up, total_wq),
            "secagg-weight-capped": float(sum(m.get(WEIGHT_CAPPED, 0.0) for m in site_metrics.values())),
        }
        sites = self._sites(nodes, outcome, rnd.log.dropped, site_metrics, set(rnd.uploaded))
        return SecAggRoundResult(server_round, sites, mean_delta, metrics)

    @staticmethod
    def _sites(nodes, outcome, stage_drops, site_metrics, uploaded) -> list[SiteOutcome]:
        sites = []
        for u in nodes:
            m = site_metrics.get(u, {})
            if uploaded is not None and u in uploaded:
                sites.append(SiteOutcome(u, "ok", "", m))
            elif u in outcome:
                o = outcome[u]
                sites.append(SiteOutcome(u, o.status, o.reason, m))
            elif u in stage_drops:
                stage, why = stage_drops[u]
                sites.append(SiteOutcome(u, "dropped", f"{stage}: {why}", m))
            else:
                sites.append(SiteOutcome(u, "dropped", "round skipped before its upload counted", m))
        return sites


def _mean_metrics(sites: list[SiteOutcome]) -> dict[str, float]:
    """Unweighted mean of the ok sites' scalar metrics (their weights are secret under secure aggregation)."""
    ok = [s for s in sites if s.status == "ok"]
    out: dict[str, float] = {}
    for name in sorted({k for s in ok for k in s.metrics} - {"partition-id", CLIPPED, WEIGHT_CAPPED}):
        vals = [s.metrics[name] for s in ok if name in s.metrics and math.isfinite(s.metrics[name])]
        if vals:
            out[name] = float(np.mean(vals))
    return out


class XR0SecAggFedAvg(XR0FedAvg):
    """:class:`XR0FedAvg` for rounds run through a :class:`SecAggGrid`.

    ``aggregate_train`` receives one :class:`SecAggRoundResult` instead of per-site replies: the new global
    weights are ``server_optimizer.apply(global, global + mean update)``. Round metrics: the sites' scalar
    metrics averaged without weights (``num-examples`` per site is secret; only its sum is known), plus
    ``secagg-uploads``, ``secagg-dropped``, ``secagg-clipped``, ``secagg-error-bound``, ``secagg-skipped``.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Any]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        g = self.global_round(server_round)
        if self._sent is None:
            raise RuntimeError("aggregate_train called before configure_train")
        results = [r for r in replies if isinstance(r, SecAggRoundResult)]
        if len(results) != 1:
            raise RuntimeError("secure aggregation is on but the strategy did not get a SecAggGrid result; "
                               "wrap the grid with strategies.secagg.SecAggGrid")
        res = results[0]
        metrics = _mean_metrics(res.sites)
        metrics.update(res.metrics)
        ok = sum(s.status == "ok" for s in res.sites)
        metrics.update({
            "replies-ok": float(ok),
            "replies-dropped": float(sum(s.status == "dropped" for s in res.sites)),
            "replies-failed": float(sum(s.status == "failed" for s in res.sites)),
        })
        for s in res.sites:
            if s.status != "ok":
                log.warning("round %d: node %d %s: %s", g, s.node_id, s.status, s.reason)
        new_arrays: ArrayRecord | None = None
        if res.mean_delta is not None and ok >= self.min_replies:
            mean = {k: (self._sent[k].astype(np.float64) + res.mean_delta[k]).astype(self._sent[k].dtype)
                    for k in self._sent}
            new_arrays = numpy_to_arrays(self.server_optimizer.apply(self._sent, mean))
        elif res.mean_delta is not None:
            log.warning("round %d: %d secure uploads < federation.min-replies %d; global weights unchanged",
                        g, ok, self.min_replies)
            metrics["secagg-skipped"] = 1.0
        else:
            log.warning("round %d: %s", g, res.skipped_reason)
        outcome = RoundOutcome(g, "train", res.sites, metrics, updated=new_arrays is not None, arrays=new_arrays)
        if self.on_round_end is not None:
            self.on_round_end(outcome)
        return new_arrays, MetricRecord(metrics)


class InProcessGrid(Grid):
    """A Grid that runs a ClientApp for each of ``num_nodes`` nodes in this process, in order.

    For tests and ``bench/secagg.py``: the same messages, handlers and mods as a real run, without Ray or a
    SuperLink. ``drop(stage_message_type, node) -> bool`` makes a node silent for a message (a dropout).
    It sets Flower's process-wide ``TaskIdentity`` (needed to build messages outside a running app).
    """

    def __init__(self, client_app: Any, num_nodes: int, run_config: Mapping[str, Any] | None = None,
                 node_configs: Mapping[int, Mapping[str, Any]] | None = None,
                 drop: Callable[[str, int], bool] | None = None, first_node_id: int = 101) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app = client_app
        self.drop = drop or (lambda _t, _n: False)
        self.node_ids = [first_node_id + 13 * i for i in range(num_nodes)]
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=dict((node_configs or {}).get(i, {})),
                       state=RecordDict(), run_config=dict(run_config or {}))
            for i, n in enumerate(self.node_ids)
        }
        self.sent: list[Message] = []  # every instruction, for tests that inspect traffic
        self.received: list[Message] = []  # every reply
        self._counter = 0

    def set_run(self, run):  # type: ignore[override]
        self._run = run

    @property
    def run(self):  # type: ignore[override]
        return getattr(self, "_run", None)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[override]
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages):  # type: ignore[override]
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def pull_messages(self, message_ids):  # type: ignore[override]
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            self._counter += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._counter}"
            self.sent.append(msg)
            node = int(msg.metadata.dst_node_id)
            if self.drop(msg.metadata.message_type, node):
                continue
            reply = self.app(msg, self.contexts[node])
            self.received.append(reply)
            replies.append(reply)
        return replies
