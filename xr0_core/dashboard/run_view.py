"""A coordinator's run folder as one JSON-able state for the live page (``xr0 dashboard --run-dir DIR``).

Read, never written (the coordinator writes them; :mod:`server.run`)::

    metrics.json         every finished round with per-hospital outcomes (the history; source of every number)
    events.jsonl         run start (total rounds, config), each round's end, run end (xr0_core/run_events.py)
    run.json             the run summary, at the end (status, stop reason; in a simulation also each
                         hospital's ledger epsilon)
    checkpoints/latest.json   the last checkpointed round

What the state holds: :func:`build_run_state`. Nothing that ``report.html`` does not show already leaves this
module: hospital names, statuses and reasons (sanitised by each hospital before sending), scalar metrics, the
flat config; no data or state paths of the hospitals (``run.json`` lists them in a simulation: dropped here).
:class:`RunView` re-reads the files only when their size / mtime / inode change, so following a run costs a
few ``stat`` calls per poll.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from xr0_core.dashboard.jsonsafe import read_json, stat_key
from xr0_core.run_events import EVENTS_FILE, ROUND_END, RUN_END, RUN_START, JsonLinesTail

HEALTH_SERIES = ("rankme-cls", "knn-probe", "teacher-entropy", "feature-std")  # health/<key> plotted per round
MAX_GRID_ROUNDS = 300  # rounds shown in the per-round grid (newest first); older ones are in report.html
SITE_FIELDS = ("name", "images", "by_anatomy", "epsilon", "delta")  # of run.json "sites": no local paths
STATUS_TEXT = {
    "waiting": "waiting for the run to start (no metrics.json or events.jsonl yet)",
    "running": "running",
    "completed": "completed",
    "stopped": "stopped",
    "crashed": "crashed",
    "unknown": "no event log: a coordinator from before events.jsonl, or one that stopped without run.json",
}


# ---------------------------------------------------------------------------------------------- progress
def current_segment(events: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The last ``run-start`` event and every event after it (a resumed run starts a new segment)."""
    starts = [i for i, e in enumerate(events) if e.get("event") == RUN_START]
    if not starts:
        return None, []
    return events[starts[-1]], events[starts[-1] + 1:]


def evaluation_expected(round_: int, total: int, every: int) -> bool:
    """Whether the coordinator evaluates after train round ``round_`` (``XR0FedAvg.configure_evaluate``)."""
    return round_ == total or (every > 0 and round_ % every == 0)


def progress(history: list[dict[str, Any]], events: list[dict[str, Any]], run_json: dict[str, Any] | None,
             cfg: dict[str, Any]) -> dict[str, Any]:
    """Status, rounds done / running / total, ETA and what the coordinator is doing now.

    Returns
    -------
    dict: ``status`` (waiting | running | completed | stopped | crashed | unknown), ``status_text``,
    ``reason`` (stop or crash reason), ``rounds_total``, ``rounds_done`` (train rounds in the history),
    ``running`` (the round being trained, or None), ``doing`` (one line), ``started`` / ``last_event`` (unix
    seconds or None), ``eta_at`` (unix seconds when the last train round should end, from the mean time per
    round of this run so far; None before a round of this run ended), ``resumed_after`` (rounds done before
    this run started).
    """
    start, segment = current_segment(events)
    end = next((e for e in segment if e.get("event") == RUN_END), None)
    train = [r for r in history if r.get("kind") == "train"]
    done = max((int(r["round"]) for r in train), default=0)
    total = int((start or {}).get("rounds") or cfg.get("federation.rounds") or 0)
    if start is not None and end is None:
        status, reason = "running", ""
    elif end is not None:
        status, reason = str(end.get("status", "completed")), str(end.get("reason", "") or "")
        if run_json and run_json.get("stop_reason"):
            reason = str(run_json["stop_reason"])
    elif run_json is not None:
        status, reason = str(run_json.get("status", "completed")), str(run_json.get("stop_reason", "") or "")
    elif history:
        status, reason = "unknown", ""
    else:
        status, reason = "waiting", ""
    out: dict[str, Any] = {"status": status, "status_text": STATUS_TEXT.get(status, status), "reason": reason,
                           "rounds_total": total, "rounds_done": done, "running": None, "doing": "",
                           "started": (start or {}).get("time"), "last_event": None, "eta_at": None,
                           "resumed_after": int((start or {}).get("done") or 0)}
    if segment or start:
        out["last_event"] = max(float(e.get("time", 0)) for e in ([start] if start else []) + segment)
    if status != "running":
        return out
    every = int(cfg.get("eval.every") or 0)
    last = history[-1] if history else None
    if done < total:
        if last is not None and last.get("kind") == "train" and evaluation_expected(done, total, every):
            out["doing"] = f"evaluating the global model after round {done}"
        else:
            out["running"] = done + 1
            out["doing"] = f"training round {done + 1} of {total}"
    elif last is not None and last.get("kind") == "train" and evaluation_expected(done, total, every):
        out["doing"] = f"final evaluation after round {done}"
    else:
        out["doing"] = "exporting the backbone and writing report.html"
    train_ends = [e for e in segment if e.get("event") == ROUND_END and e.get("kind") == "train"]
    this_run = done - out["resumed_after"]
    if start is not None and train_ends and this_run > 0 and done < total:
        per_round = (float(train_ends[-1]["time"]) - float(start["time"])) / this_run
        out["eta_at"] = float(train_ends[-1]["time"]) + per_round * (total - done)
    return out


# ---------------------------------------------------------------------------------------------- hospitals
def site_names(history: list[dict[str, Any]], run_sites: list[dict[str, Any]]) -> list[str]:
    names = {str(s["name"]) for r in history for s in r.get("sites", []) if "name" in s}
    names |= {str(s["name"]) for s in run_sites if "name" in s}
    return sorted(names)


def is_secagg_round(entry: dict[str, Any]) -> bool:
    return entry.get("kind") == "train" and any(str(k).startswith("secagg-") for k in entry.get("metrics", {}))


def hospitals(history: list[dict[str, Any]], run_sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per hospital (by site name).

    ``last``: its outcome in the newest round it appears in (round, kind, status, reason); ``train``: counts
    of train outcomes (ok, failed, dropped, skipped); ``problem``: its newest non-ok outcome with the reason;
    ``epsilon``: the ε it released with its newest train reply (lifetime at that hospital, at ``delta``, as its
    policy lets it leave: rounded up to 0.1 by default) with ``budget`` and ``budget_left``; ``epsilon_run``
    and ``run_cap``: what it spent in this run (``epsilon-run``, resumes included) against its per-run cap
    (``"all"``: the rest of its lifetime budget); ``epsilon_withheld``: its policy keeps ε in; ``secagg``: masked rounds its upload counted in / masked rounds it was asked to;
    ``ledger_epsilon``: a simulation's reading of the hospital's own ledger at the end, ``images``: its image count
    (both from ``run.json`` when the run summary lists the hospitals).
    """
    by_name = {str(s.get("name")): s for s in run_sites}
    rows = []
    for name in site_names(history, run_sites):
        seen = [(r, s) for r in history for s in r.get("sites", []) if s.get("name") == name]
        train = [(r, s) for r, s in seen if r.get("kind") == "train"]
        row: dict[str, Any] = {"name": name, "last": None, "problem": None,
                               "train": dict(Counter(str(s.get("status")) for _, s in train)),
                               "epsilon": None, "budget": None, "budget_left": None, "delta": None,
                               "epsilon_round": None, "epsilon_run": None, "run_cap": None, "epsilon_withheld": False,
                               "secagg": None, "ledger_epsilon": by_name.get(name, {}).get("epsilon"),
                               "images": by_name.get(name, {}).get("images"), "evaluation": None}
        if seen:
            r, s = seen[-1]
            row["last"] = {"round": r.get("round"), "kind": r.get("kind"), "status": s.get("status"),
                           "reason": s.get("reason", "")}
        bad = [(r, s) for r, s in seen if s.get("status") not in ("ok", "empty")]
        if bad:
            r, s = bad[-1]
            row["problem"] = {"round": r.get("round"), "kind": r.get("kind"), "status": s.get("status"),
                              "reason": s.get("reason", "")}
        with_eps = [(r, s) for r, s in train if "epsilon" in s.get("metrics", {})]
        if with_eps:
            r, s = with_eps[-1]
            m = s["metrics"]
            row.update(epsilon=m["epsilon"], epsilon_round=r.get("round"), budget=m.get("privacy-budget"),
                       delta=m.get("privacy-delta"))
            if isinstance(row["budget"], (int, float)):
                row["budget_left"] = max(0.0, float(row["budget"]) - float(m["epsilon"]))
            row["epsilon_run"] = m.get("epsilon-run")
            cap = m.get("privacy-run-cap")
            row["run_cap"] = "all" if isinstance(cap, (int, float)) and math.isinf(cap) else cap
        if train and "epsilon-withheld" in train[-1][1].get("metrics", {}):
            row["epsilon_withheld"] = True
        masked = [(r, s) for r, s in train if is_secagg_round(r)]
        if masked:
            row["secagg"] = {"counted": sum(s.get("status") == "ok" for _, s in masked), "rounds": len(masked)}
        evals = [(r, s) for r, s in seen if r.get("kind") == "evaluate"]
        if evals:
            r, s = evals[-1]
            row["evaluation"] = {"round": r.get("round"), "status": s.get("status"), "reason": s.get("reason", "")}
        rows.append(row)
    return rows


def round_note(entry: dict[str, Any]) -> str:
    """Why a round did not move the global model, who still paid ε for it, and its warnings."""
    from xr0_core.report import charged_note

    parts = []
    if entry.get("reason"):
        parts.append(("skipped: " if not entry.get("updated", True) and entry.get("kind") == "train" else "")
                     + str(entry["reason"]))
    charged = charged_note(entry)
    return "; ".join(parts + ([charged] if charged else []) + [str(w) for w in entry.get("warnings", [])])


def round_grid(history: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per round (newest first, at most :data:`MAX_GRID_ROUNDS`), per hospital: status and reason."""
    rows = []
    for r in reversed(history[-MAX_GRID_ROUNDS:]):
        by = {s.get("name"): s for s in r.get("sites", [])}
        rows.append({"round": r.get("round"), "kind": r.get("kind"), "updated": bool(r.get("updated")),
                     "seconds": r.get("seconds"), "note": round_note(r),
                     "ok": sum(s.get("status") == "ok" for s in r.get("sites", [])), "n": len(r.get("sites", [])),
                     "cells": [({"status": by[n].get("status"), "reason": by[n].get("reason", "")} if n in by
                                else None) for n in names]})
    return {"hospitals": names, "rows": rows, "hidden": max(0, len(history) - MAX_GRID_ROUNDS)}


# ---------------------------------------------------------------------------------------------- series
def series(history: list[dict[str, Any]], cfg: dict[str, Any], names: list[str], out_dir: Path) -> dict[str, Any]:
    """Plot data: per-step loss per hospital (:func:`xr0_core.report.loss_points`), the aggregate loss per
    round, ε per hospital per round (with its budget), and SSL health measurements per hospital per round."""
    from xr0_core.report import RunReport, loss_points

    rep = RunReport(out_dir, {"config": cfg}, history)
    train = rep.train
    loss = {}
    for n in names:
        xs, ys, per_step = loss_points(rep, n)
        if xs:
            loss[n] = {"x": xs, "y": ys, "per_step": per_step}
    local = int(cfg.get("train.local-steps", 1) or 1)
    agg = [(r["round"] * local - 1, r["metrics"]["loss"]) for r in train if "loss" in r.get("metrics", {})]
    eps: dict[str, Any] = {}
    health: dict[str, dict[str, Any]] = {k: {} for k in HEALTH_SERIES}
    for r in train:
        for s in r.get("sites", []):
            m = s.get("metrics", {})
            if "epsilon" in m:
                e = eps.setdefault(s["name"], {"x": [], "y": [], "budget": None})
                e["x"].append(r["round"])
                e["y"].append(m["epsilon"])
                e["budget"] = m.get("privacy-budget", e["budget"])
            for k in HEALTH_SERIES:
                if f"health/{k}" in m:
                    h = health[k].setdefault(s["name"], {"x": [], "y": []})
                    h["x"].append(r["round"])
                    h["y"].append(m[f"health/{k}"])
    return {"loss": loss, "loss_aggregate": {"x": [a[0] for a in agg], "y": [a[1] for a in agg]},
            "epsilon": eps, "health": {k: v for k, v in health.items() if v}, "local_steps": local}


def evaluations(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per evaluation round with results (newest first): the verdict rows of :func:`xr0_core.eval.summary.
    summary_rows` (pooled pretrained - random init with its 95 % interval) and each hospital's status."""
    from xr0_core.eval.summary import summary_rows

    out = []
    for i, r in enumerate(history):
        if r.get("kind") != "evaluate":
            continue
        rows = summary_rows(history[:i + 1]) if any(s.get("status") == "ok" for s in r.get("sites", [])) else []
        keep = ("family", "task", "metric", "pretrained", "random", "diff", "low", "high", "verdict", "hospitals",
                "units")
        out.append({"round": r.get("round"),
                    "rows": [{k: row.get(k) for k in keep} for row in rows if row.get("round") == r.get("round")],
                    "sites": [{"name": s.get("name"), "status": s.get("status"), "reason": s.get("reason", "")}
                              for s in sorted(r.get("sites", []), key=lambda s: str(s.get("name")))]})
    return list(reversed(out))


SECAGG_KEYS = ("secagg-uploads", "secagg-dropped", "secagg-threshold", "secagg-clipped", "secagg-error-bound",
               "secagg-skipped")


def secagg_rounds(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per masked train round (newest first): uploads, dropouts, threshold, clipping, error bound, skipped."""
    return [{"round": r.get("round"), **{k: r["metrics"].get(k) for k in SECAGG_KEYS}, "note": round_note(r)}
            for r in reversed(history) if is_secagg_round(r)]


def alerts(history: list[dict[str, Any]], prog: dict[str, Any]) -> list[str]:
    """Lines a coordinator must not miss: a stopped or crashed run, rounds that did not update."""
    out = []
    if prog["status"] in ("stopped", "crashed"):
        out.append(f"run {prog['status']}: {prog['reason'] or 'no reason recorded'}")
    for r in reversed(history):
        if r.get("kind") == "train" and not r.get("updated", True):
            out.append(f"round {r.get('round')} did not update the global model: {round_note(r) or 'no usable reply'}")
    return out[:20]


def mode(cfg: dict[str, Any]) -> list[str]:
    out = []
    if cfg.get("privacy.enabled"):
        out.append("sample-level DP")
    if cfg.get("privacy.client-level"):
        out.append("client-level DP")
    if cfg.get("secagg.enabled"):
        out.append("secure aggregation")
    if cfg.get("multimodal.enabled"):
        out.append("multimodal")
    return out


def build_run_state(history: list[dict[str, Any]], events: list[dict[str, Any]], run_json: dict[str, Any] | None,
                    checkpoint_round: int | None, out_dir: Path, config: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Everything the run page shows, from the files' contents (pure: no file access except none).

    Parameters
    ----------
    history : ``metrics.json["rounds"]`` (possibly empty)
    events : the records of ``events.jsonl`` in order
    run_json : ``run.json`` or None
    checkpoint_round : the round ``checkpoints/latest.json`` names, or None
    out_dir : the run folder (its name is shown; loss points need it only as a label)
    config : the flat run config when known from elsewhere (a checkpoint's state.json)
    """
    start, _ = current_segment(events)
    cfg = dict((start or {}).get("config") or (run_json or {}).get("config") or config or {})
    prog = progress(history, events, run_json, cfg)
    run_sites = [{k: s[k] for k in SITE_FIELDS if k in s} for s in (run_json or {}).get("sites") or []
                 if isinstance(s, dict)]
    names = site_names(history, run_sites)
    from xr0_core.train.health_verdict import assess_history

    health = assess_history(history)
    return {
        "kind": "run",
        "title": f"XR-0 federation: {out_dir.name}",
        "run_key": (start or {}).get("run_key") or (run_json or {}).get("run_key") or "",
        "progress": prog,
        "mode": mode(cfg),
        "checkpoint_round": checkpoint_round,
        "alerts": alerts(history, prog),
        "hospitals": hospitals(history, run_sites),
        "grid": round_grid(history, names),
        "series": series(history, cfg, names, out_dir),
        "health": {"status": health["status"],
                   "sites": [{"name": n, "status": v["status"], "reasons": v["reasons"], "last": v["last"]}
                             for n, v in health["sites"].items()]},
        "evaluations": evaluations(history),
        "secagg": secagg_rounds(history),
        "config": cfg,
    }


class RunView:
    """Follows one run folder; :meth:`state` is cached until one of its files changes.

    Parameters
    ----------
    run_dir : Path
        The coordinator's ``federation.out-dir`` (it may not exist yet: the page waits for the run).
    """

    kind = "run"

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir).expanduser().resolve()
        self._tail = JsonLinesTail(self.dir / EVENTS_FILE)
        self._events: list[dict[str, Any]] = []
        self._history: list[dict[str, Any]] = []
        self._run_json: dict[str, Any] | None = None
        self._keys: dict[str, Any] = {}
        self._config: dict[str, Any] | None = None
        self._checkpoint: int | None = None
        self._state: dict[str, Any] | None = None
        self.version = 0  # +1 whenever a file changed and the state was rebuilt
        self._lock = threading.Lock()

    def _files(self) -> dict[str, Path]:
        return {"metrics": self.dir / "metrics.json", "run": self.dir / "run.json",
                "events": self.dir / EVENTS_FILE, "latest": self.dir / "checkpoints" / "latest.json"}

    def state(self) -> dict[str, Any]:
        """The current state (:func:`build_run_state`) plus ``version`` (changes with the files) and
        ``generated`` (unix seconds of the reading that built it)."""
        with self._lock:
            keys = {name: stat_key(path) for name, path in self._files().items()}
            if self._state is None or keys != self._keys:
                self._reload(keys)
                self._state = build_run_state(self._history, self._events, self._run_json, self._checkpoint,
                                              self.dir, self._config)
                self._keys = keys
                self.version += 1
                self._state = {**self._state, "version": self.version, "generated": time.time()}
            return self._state

    def _reload(self, keys: dict[str, Any]) -> None:
        files = self._files()
        if keys["events"] != self._keys.get("events"):
            new, reset = self._tail.read_new()
            self._events = (new if reset else self._events + new)
        if keys["metrics"] != self._keys.get("metrics"):
            raw = read_json(files["metrics"])
            rounds = raw.get("rounds") if isinstance(raw, dict) else None
            self._history = [r for r in rounds if isinstance(r, dict)] if isinstance(rounds, list) else []
        if keys["run"] != self._keys.get("run"):
            raw = read_json(files["run"])
            self._run_json = raw if isinstance(raw, dict) else None
        if keys["latest"] != self._keys.get("latest"):
            raw = read_json(files["latest"])
            self._checkpoint = int(raw["round"]) if isinstance(raw, dict) and isinstance(raw.get("round"), int) else None
            if self._checkpoint is not None and self._config is None and isinstance(raw.get("path"), str):
                # A run without events.jsonl (older coordinator) still shows its config, from the checkpoint.
                state = read_json(self.dir / "checkpoints" / Path(raw["path"]).name / "state.json")
                if isinstance(state, dict) and isinstance(state.get("config_flat"), dict):
                    self._config = state["config_flat"]
