"""The coordinator's run: initial weights or resume, rounds through :class:`XR0FedAvg`, checkpoint after
every round, export and report at the end.

Files under ``cfg.federation.out_dir``::

    checkpoints/            atomic per-round checkpoints (server/checkpoint.py)
    metrics.json            every round: aggregate and per-site metrics, dropped/failed sites with reasons
    tensorboard/            scalars per round (aggregate and per site)
    backbone.safetensors    final backbone, timm-compatible (+ backbone.json: how to create it with timm)
    run.json                summary: rounds completed, sites, final checkpoint, report
    report.html             curves and tables (xr0_core/report.py)
    events.jsonl            append-only: run start, each round's end, run end (xr0_core/run_events.py), what
                            ``xr0 dashboard`` follows a running federation by
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from strategies.aggregate import ServerOptimizer
from strategies.fedavg_ssl import RoundOutcome, XR0FedAvg, numpy_to_arrays
from xr0_core.atomic import atomic_write_json
from xr0_core.config import XR0Config
from xr0_core.run_events import ROUND_END, RUN_END, RUN_START, EventLog

from .checkpoint import ServerCheckpoint, load_latest, resume_point, save_checkpoint

log = logging.getLogger(__name__)

_PARTITION_TAG = re.compile(r"\[simulated partition (\d+)\]")  # client/errors.py tags error replies


class FederationStalled(RuntimeError):
    """No hospital's reply was usable for ``federation.max-failed-rounds`` rounds in a row: the run stops
    (non-zero exit) instead of going on and exporting the initial weights as if trained."""


def simulated_site_names(cfg: XR0Config) -> list[str]:
    """Hospital names in a simulation: the sorted sub-folders of ``simulation.data-root``."""
    from xr0_core.data.index import hospital_dirs

    root = Path(cfg.simulation.data_root) if cfg.simulation.data_root else None
    if root is None or not root.is_dir():
        return []
    return [p.name for p in hospital_dirs(root)]


def evaluation_summary(entry: dict[str, Any]) -> str:
    """One line for an evaluate round: how many hospitals answered and the headline number vs random init;
    "nothing to evaluate" when no hospital had labelled held-out images (not an error)."""
    status = [s["status"] for s in entry["sites"]]
    ok = status.count("ok")
    if ok == 0 and status and all(st == "empty" for st in status):
        return f"nothing to evaluate (none of the {len(status)} hospitals has labelled held-out images)"
    text = f"{ok}/{len(status)} sites ok"
    empty = status.count("empty")
    if empty:
        text += f", {empty} with nothing to evaluate"
    m = entry["metrics"]
    for pre, rnd, label in (("classification/anatomy/knn-accuracy", "classification/anatomy/random/knn-accuracy",
                             "anatomy k-NN"), ("knn-anatomy", "knn-anatomy-random", "anatomy k-NN")):
        if pre in m and rnd in m:
            return f"{text}; {label} {m[pre]:.3f} vs random init {m[rnd]:.3f} (details in report.html)"
    return text


class Coordinator:
    """Runs one federation (fresh or resumed) and writes everything the coordinator keeps."""

    def __init__(self, cfg: XR0Config) -> None:
        self.cfg = cfg
        self.out = Path(cfg.federation.out_dir).expanduser().resolve()
        self.ckpt_dir = self.out / "checkpoints"
        self.site_names = simulated_site_names(cfg)
        self.node_names: dict[int, str] = {}  # deployment: node id -> the name it was admitted under
        self._grid: Grid | None = None
        self.history: list[dict[str, Any]] = []
        self.weights: dict[str, np.ndarray] = {}
        self.run_key = ""
        self.server_opt = ServerOptimizer(
            kind=cfg.federation.server_optimizer, lr=cfg.federation.server_lr, momentum=cfg.federation.server_momentum
        )
        self._round_started = time.monotonic()
        self._run_started = time.monotonic()
        self._rounds_this_run = 0
        self._tb = None
        self._failed_rounds = 0  # consecutive train rounds without a usable reply
        self._unattributable: set[frozenset[int]] = set()  # uploader sets whose unmasked sum was out of range
        self.events = EventLog(self.out)

    # ---- start / resume --------------------------------------------------------------------------

    def _start_state(self) -> int:
        """Load the checkpoint when resuming, else fresh weights; return the rounds already done."""
        ckpt = resume_point(self.ckpt_dir, self.cfg)
        if ckpt is None:
            if self.cfg.federation.resume:
                log.warning("resume requested but %s holds no checkpoint: starting a new run", self.ckpt_dir)
            from xr0_core.ssl.factory import initial_shared_state

            self.weights = {k: v.numpy() for k, v in initial_shared_state(self.cfg).items()}
            self.run_key = secrets.token_hex(8)
            return 0
        self.weights = ckpt.weights
        self.run_key = ckpt.run_key
        self.history = ckpt.history
        self.server_opt.load_state_arrays(ckpt.optimizer, ckpt.optimizer_steps)
        log.info("resuming run %s after round %d", self.run_key, ckpt.round)
        return ckpt.round

    # ---- per-round bookkeeping -------------------------------------------------------------------

    def site_name(self, node_id: int, metrics: dict[str, float], reason: str = "") -> str:
        """Hospital name in a simulation (from ``partition-id`` or the error tag); in deployment the name the
        coordinator admitted the node under (``xr0 coordinator admit``: the SuperLink's registry, read through
        ``Grid.get_nodes``); else ``node-<id>``. A ``partition-id`` that is not a whole number in range (NaN,
        inf, hostile) names nobody."""
        pid = metrics.get("partition-id")
        if pid is None:
            tag = _PARTITION_TAG.search(reason or "")
            pid = int(tag.group(1)) if tag else None
        if (isinstance(pid, (int, float)) and math.isfinite(pid) and float(pid).is_integer()
                and 0 <= int(pid) < len(self.site_names)):
            return self.site_names[int(pid)]
        return self.node_names.get(int(node_id)) or f"node-{node_id}"

    def on_round_end(self, outcome: RoundOutcome) -> None:
        from .sites import node_names

        self.node_names.update(node_names(self._grid))  # hospitals admitted since the last round too
        entry = outcome.to_json()
        for site in entry["sites"]:
            site["name"] = self.site_name(site["node_id"], site["metrics"], site.get("reason", ""))
        entry["seconds"] = round(time.monotonic() - self._round_started, 3)
        self.history.append(entry)
        t_ckpt = time.perf_counter()
        if outcome.kind == "train":
            if outcome.arrays is not None:
                self.weights = {k: a.numpy() for k, a in outcome.arrays.items()}
            save_checkpoint(
                self.ckpt_dir,
                ServerCheckpoint(
                    round=outcome.server_round,
                    run_key=self.run_key,
                    config_hash=self.cfg.hash(),
                    config_flat=self.cfg.to_flat(),
                    weights=self.weights,
                    optimizer=self.server_opt.state_arrays(),
                    optimizer_steps=self.server_opt.steps,
                    history=self.history,
                ),
            )
        entry["checkpoint_seconds"] = round(time.perf_counter() - t_ckpt, 4)
        atomic_write_json(self.out / "metrics.json", {"run_key": self.run_key, "rounds": self.history})
        self.events.append(ROUND_END, round=entry["round"], kind=entry["kind"], seconds=entry["seconds"],
                           updated=bool(entry["updated"]))
        self._log_tensorboard(entry)
        self._print_progress(entry)
        self._round_started = time.monotonic()
        if outcome.kind == "train":
            self._check_stalled(entry)

    def _check_stalled(self, entry: dict[str, Any]) -> None:
        """Raise :class:`FederationStalled` after ``max-failed-rounds`` train rounds that did not move the
        global model (no usable reply, a skipped secure round, or an aggregate that changed nothing).

        A round skipped for an unattributable fault (the unmasked sum out of range: some uploader cheated,
        no one can say which) does not count, unless the same set of hospitals failed that way before: one
        hostile hospital must not end a run, but a set that keeps failing would never train."""
        if not entry["updated"] and entry.get("fault") == "unattributable":
            involved = frozenset(entry.get("involved", ()))
            if involved not in self._unattributable:
                self._unattributable.add(involved)
                return
        self._failed_rounds = 0 if entry["updated"] else self._failed_rounds + 1
        limit = self.cfg.federation.max_failed_rounds
        if limit <= 0 or self._failed_rounds < limit:
            return
        if entry.get("reason") and any(s["status"] == "ok" for s in entry["sites"]):
            raise FederationStalled(f"stopped after round {entry['round']}: the round failed ({entry['reason']})")
        reasons: dict[str, list[str]] = {}
        for site in entry["sites"]:
            reasons.setdefault(site.get("reason") or site["status"], []).append(site["name"])
        cause = "; ".join(f"{', '.join(names)}: {why}" for why, names in reasons.items()) or "no hospital replied"
        if entry.get("reason"):
            cause = f"{entry['reason']}; {cause}"
        raise FederationStalled(
            f"stopped after round {entry['round']}: no hospital trained in {self._failed_rounds} round(s) in a row "
            f"({cause})")

    def _print_progress(self, entry: dict[str, Any]) -> None:
        """The round on the console: the progress bar after a train round, one line after an evaluation,
        one line per hospital that did not take part (with its reason)."""
        from xr0_core.console import console, eta

        con = console()
        status = {s["name"]: s["status"] for s in entry["sites"]}
        ok = sum(v == "ok" for v in status.values())
        m = entry["metrics"]
        total = self.cfg.federation.rounds
        if entry["kind"] == "train":
            parts = [f"train {ok}/{len(status)} sites ok"]
            if "loss" in m:
                parts.append(f"loss {m['loss']:.3f}")
            eps = [s["metrics"]["epsilon"] for s in entry["sites"] if "epsilon" in s["metrics"]]
            if eps:
                parts.append(f"ε ≤ {max(eps):.2f}")
            self._rounds_this_run += 1
            parts.append(f"({entry['seconds']:.0f} s)")
            left = eta(self._rounds_this_run, self._rounds_this_run + total - entry["round"],
                       time.monotonic() - self._run_started)
            if left:
                parts.append(left)
            con.progress(entry["round"], total, " ".join(parts))
            if not entry["updated"] and entry.get("reason"):
                con.line(f"  round {entry['round']} failed, global weights kept: {entry['reason']}")
        else:
            con.line(f"evaluate round {entry['round']}: " + evaluation_summary(entry))
        for s in entry["sites"]:
            if s["status"] not in ("ok", "empty"):
                con.line(f"  {s['name']} {s['status']}: {s['reason']}")

    def _log_tensorboard(self, entry: dict[str, Any]) -> None:
        try:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:  # tensorboard is a declared dependency; a broken install must not stop a run
            return
        step = entry["round"]
        for name, value in entry["metrics"].items():
            self._tb.add_scalar(f"{entry['kind']}/{name}", value, step)
        for site in entry["sites"]:
            for name, value in site["metrics"].items():
                self._tb.add_scalar(f"{entry['kind']}-{site['name']}/{name}", value, step)
        self._tb.flush()

    # ---- the run ---------------------------------------------------------------------------------

    def run(self, grid: Grid) -> dict[str, Any]:
        """The whole run; ``run-start`` / ``run-end`` events around it (a crash is logged as ``crashed`` with
        its exception type and message, then raised again)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._grid = grid  # the deployment Grid names the nodes (before any secure-aggregation wrapper)
        done = self._start_state()
        self.events.append(RUN_START, run_key=self.run_key, rounds=self.cfg.federation.rounds, done=done,
                           config=self.cfg.to_flat())
        try:
            summary = self._run(grid, done)
        except BaseException as exc:
            self.events.append(RUN_END, status="crashed", reason=f"{type(exc).__name__}: {exc}"[:300],
                               rounds_completed=self._rounds_done())
            raise
        self.events.append(RUN_END, status=summary["status"], reason=summary.get("stop_reason", ""),
                           rounds_completed=summary["rounds_completed"])
        return summary

    def _rounds_done(self) -> int:
        return max((r["round"] for r in self.history if r.get("kind") == "train"), default=0)

    def _run(self, grid: Grid, done: int) -> dict[str, Any]:
        cfg = self.cfg
        remaining = cfg.federation.rounds - done
        if remaining > 0:
            # Secure aggregation (docs/secure-aggregation.md): a strategy that takes the unmasked mean and a
            # Grid wrapper that runs each train round as SecAgg+ stages; evaluation traffic is unchanged.
            strategy_cls = XR0FedAvg
            if cfg.secagg.enabled:
                from strategies.secagg import SecAggGrid, SecAggSettings, XR0SecAggFedAvg

                strategy_cls = XR0SecAggFedAvg
                grid = SecAggGrid(grid, SecAggSettings.from_config(cfg.secagg, cfg.privacy))
            strategy = strategy_cls(
                round_offset=done,
                local_steps=cfg.train.local_steps,
                total_rounds=cfg.federation.rounds,
                run_seed=cfg.seed,
                run_key=self.run_key,
                config_hash=cfg.hash(),
                server_optimizer=self.server_opt,
                min_replies=cfg.federation.min_replies,
                max_update_norm=cfg.federation.max_update_norm,
                max_update_ratio=cfg.federation.max_update_ratio,
                weight_cap=cfg.federation.weight_cap,
                fraction_train=cfg.federation.fraction_train,
                fraction_evaluate=cfg.federation.fraction_evaluate or cfg.federation.fraction_train,
                min_available=cfg.federation.min_available,
                evaluate_every=cfg.eval.every,
                on_round_end=self.on_round_end,
                round_timeout=cfg.federation.round_timeout,
                client_clip=cfg.privacy.client_clip if cfg.privacy.client_level else 0.0,
                # Every round starts with the hospitals' preflight answers (issue 22): a hospital that would
                # refuse says so before any key exchange or training. A secure round needs 2 hospitals at least
                # (every site refuses a Shamir threshold below 2), and its configured threshold.
                preflight=True,
                min_ready=max(2, cfg.secagg.threshold) if cfg.secagg.enabled else 0,
            )
            self._round_started = self._run_started = time.monotonic()
            try:
                strategy.start(
                    grid=grid,
                    initial_arrays=numpy_to_arrays(self.weights),
                    num_rounds=remaining,
                    timeout=cfg.federation.round_timeout,
                    train_config=ConfigRecord(),
                    evaluate_config=ConfigRecord(),
                )
            except FederationStalled as exc:
                stop_reason = str(exc)
                log.error("%s", stop_reason)  # echoed on the console by xr0_core/console.py
                if self._tb is not None:
                    self._tb.close()
                return self.finish(stop_reason=stop_reason)
        else:
            log.info("all %d rounds already complete; only exporting", cfg.federation.rounds)
        if self._tb is not None:
            self._tb.close()
        return self.finish()

    def finish(self, stop_reason: str = "") -> dict[str, Any]:
        """Export the backbone, write run.json and report.html; return the run summary.

        A stopped run (``stop_reason``) exports no backbone: its weights are whatever the last usable round
        left (possibly the initial ones), not a trained model; the checkpoints stay for a resume."""
        from xr0_core.eval.baseline import backbone_from_shared
        from xr0_core.export import export_backbone
        from xr0_core.report import write_report

        latest = load_latest(self.ckpt_dir)
        rounds_completed = latest.round if latest else 0
        export = None
        stale = self.out / "backbone.safetensors"
        if stop_reason:
            for leftover in (stale, stale.with_suffix(".json")):  # never leave an earlier run's "final" model
                leftover.unlink(missing_ok=True)
        else:
            backbone = backbone_from_shared(self.cfg, {k: np.asarray(v) for k, v in self.weights.items()})
            export = export_backbone(backbone, self.cfg.model, stale)
        summary = {
            "status": "stopped" if stop_reason else "completed",
            "stop_reason": stop_reason,
            "run_key": self.run_key,
            "rounds_completed": rounds_completed,
            "final_checkpoint": str(self.ckpt_dir / f"round-{rounds_completed:04d}") if latest else None,
            "backbone": export,
            "metrics": str(self.out / "metrics.json"),
            "report": str(self.out / "report.html"),
            "config": self.cfg.to_flat(),
        }
        if self.cfg.multimodal.enabled and not stop_reason:  # mXR-0: text side exported; upload bytes per mode
            from xr0_core.export_text import export_multimodal_from_shared

            summary["multimodal"] = export_multimodal_from_shared(self.cfg, self.weights, self.out)
        write_report(self.out, summary, self.history)
        atomic_write_json(self.out / "run.json", summary)
        return summary

