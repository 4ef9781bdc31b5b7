"""The coordinator's run folder as the dashboard's state (xr0_core/dashboard/run_view.py): status and ETA from
the event log, per-hospital reasons, ε and secure aggregation, what may reach a browser, re-reading on change."""

from __future__ import annotations

import json
import math

from tests.report import fakerun
from xr0_core.atomic import atomic_write_json
from xr0_core.dashboard.jsonsafe import dumps
from xr0_core.dashboard.run_view import RunView, build_run_state, progress
from xr0_core.run_events import EVENTS_FILE, ROUND_END, RUN_END, RUN_START, EventLog, JsonLinesTail


def _ev(event, t, **kw):
    return {"v": 1, "event": event, "time": t, **kw}


def _train(history):
    return [r for r in history if r["kind"] == "train"]


def test_a_running_run_has_the_next_round_and_an_eta_from_this_runs_rounds():
    history = _train(fakerun.history(rounds=2))
    events = [_ev(RUN_START, 100.0, rounds=5, done=0, config={"federation.rounds": 5}),
              _ev(ROUND_END, 110.0, round=1, kind="train"), _ev(ROUND_END, 120.0, round=2, kind="train")]
    p = progress(history, events, None, {"federation.rounds": 5})
    assert (p["status"], p["rounds_done"], p["running"], p["rounds_total"]) == ("running", 2, 3, 5)
    assert p["doing"] == "training round 3 of 5"
    assert p["eta_at"] == 120.0 + 10.0 * 3  # 10 s per round so far, 3 rounds left
    assert p["last_event"] == 120.0


def test_an_evaluation_round_due_after_the_last_train_round_is_what_runs_now():
    history = _train(fakerun.history(rounds=2))
    events = [_ev(RUN_START, 0.0, rounds=4, done=0), _ev(ROUND_END, 5.0, round=2, kind="train")]
    p = progress(history, events, None, {"eval.every": 2})
    assert p["running"] is None and p["doing"] == "evaluating the global model after round 2"
    p = progress(history, events, None, {"eval.every": 0})
    assert p["running"] == 3


def test_a_resumed_run_is_running_even_beside_the_earlier_runs_run_json():
    history = _train(fakerun.history(rounds=2))
    events = [_ev(RUN_START, 0.0, rounds=2, done=0), _ev(ROUND_END, 5.0, round=2, kind="train"),
              _ev(RUN_END, 6.0, status="completed", reason="", rounds_completed=2),
              _ev(RUN_START, 50.0, rounds=4, done=2)]
    p = progress(history, events, {"status": "completed", "stop_reason": ""}, {})
    assert p["status"] == "running" and p["resumed_after"] == 2 and p["rounds_total"] == 4
    assert p["eta_at"] is None  # no round of this run has ended yet


def test_crashed_stopped_unknown_and_waiting_runs():
    history = _train(fakerun.history(rounds=1))
    crashed = [_ev(RUN_START, 0.0, rounds=3, done=0), _ev(RUN_END, 9.0, status="crashed", reason="OSError: disk full")]
    state = build_run_state(history, crashed, None, 1, fakerun_dir())
    assert state["progress"]["status"] == "crashed"
    assert state["alerts"][0] == "run crashed: OSError: disk full"
    stopped = {"status": "stopped", "stop_reason": "no hospital trained in 1 round(s) in a row"}
    assert progress(history, [], stopped, {})["reason"] == stopped["stop_reason"]
    assert progress(history, [], None, {})["status"] == "unknown"
    assert progress([], [], None, {})["status"] == "waiting"


def fakerun_dir():
    from pathlib import Path

    return Path("/nonexistent/run-folder")


def test_hospitals_carry_refusal_reasons_epsilon_budget_and_secure_aggregation():
    history = fakerun.history(dp=True, secagg=True, rounds=3)
    refused = history[1]["sites"][2]  # site02 refuses round 2
    refused.update(status="failed", reason="site policy: privacy budget spent [simulated partition 2]", metrics={})
    history[2]["sites"][1]["metrics"] = {"epsilon-withheld": 1.0, "num-examples": 1.0}  # site01 keeps ε in
    state = build_run_state(history, [], {"sites": [{"name": "site00", "epsilon": 2.5, "images": 48,
                                                     "data_dir": "/secret/data",
                                                     "state_dir": "/secret/state"}]}, 3, fakerun_dir())
    rows = {r["name"]: r for r in state["hospitals"]}
    assert rows["site02"]["problem"] == {"round": 2, "kind": "train", "status": "failed",
                                         "reason": "site policy: privacy budget spent [simulated partition 2]"}
    assert rows["site02"]["train"] == {"ok": 2, "failed": 1}
    assert rows["site02"]["secagg"] == {"counted": 2, "rounds": 3}
    assert rows["site00"]["epsilon"] == 0.9 * 3 and rows["site00"]["budget"] == 8.0
    assert math.isclose(rows["site00"]["budget_left"], 8.0 - 2.7)
    assert (rows["site00"]["epsilon_run"], rows["site00"]["run_cap"]) == (0.9 * 3, 4.0)
    assert rows["site00"]["ledger_epsilon"] == 2.5 and rows["site00"]["images"] == 48
    assert rows["site01"]["epsilon_withheld"] and rows["site01"]["epsilon_round"] == 2  # last value it did send
    grid = state["grid"]
    assert grid["hospitals"] == ["site00", "site01", "site02"]
    r2 = next(r for r in grid["rows"] if r["round"] == 2 and r["kind"] == "train")
    assert r2["cells"][2] == {"status": "failed", "reason": refused["reason"]} and r2["ok"] == 2
    assert [r["round"] for r in state["secagg"]] == [3, 2, 1]
    text = dumps(state)
    assert "/secret" not in text  # run.json's local paths of the hospitals never reach the page


def test_series_and_evaluation_verdicts_as_the_report_computes_them():
    history = fakerun.history(rounds=3)
    state = build_run_state(history, [], None, 3, fakerun_dir(), config={"train.local-steps": fakerun.LOCAL_STEPS})
    loss = state["series"]["loss"]["site00"]
    assert len(loss["x"]) == 3 * fakerun.LOCAL_STEPS and loss["per_step"]
    assert loss["x"] == sorted(loss["x"]) and loss["x"][0] == 0
    [ev] = state["evaluations"]
    rows = {(r["family"], r["task"]): r for r in ev["rows"]}
    anatomy = rows[("classification", "anatomy")]
    assert anatomy["metric"] == "linear-accuracy" and anatomy["low"] < anatomy["diff"] < anatomy["high"]
    from xr0_core.eval.summary import summary_rows

    expected = {(r["family"], r["task"]): r["verdict"] for r in summary_rows(history)}
    assert {k: r["verdict"] for k, r in rows.items()} == expected


def test_non_finite_metrics_reach_the_browser_as_null():
    history = _train(fakerun.history(rounds=1))
    history[0]["sites"][0]["metrics"]["loss"] = float("nan")
    history[0]["metrics"]["loss"] = float("inf")
    text = dumps(build_run_state(history, [], None, None, fakerun_dir()))
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)  # strict JSON


def test_the_view_rereads_only_changed_files_and_sees_new_rounds(tmp_path):
    view = RunView(tmp_path / "run")
    s0 = view.state()
    assert s0["progress"]["status"] == "waiting" and view.state()["version"] == s0["version"]
    out = tmp_path / "run"
    log = EventLog(out)
    log.append(RUN_START, run_key="k", rounds=3, done=0, config={"federation.rounds": 3})
    history = _train(fakerun.history(rounds=3))
    atomic_write_json(out / "metrics.json", {"run_key": "k", "rounds": history[:1]})
    log.append(ROUND_END, round=1, kind="train", seconds=1.0, updated=True)
    s1 = view.state()
    assert s1["version"] > s0["version"] and s1["progress"]["rounds_done"] == 1 and s1["progress"]["running"] == 2
    atomic_write_json(out / "metrics.json", {"run_key": "k", "rounds": history[:2]})
    assert view.state()["progress"]["rounds_done"] == 2


def test_the_event_tail_keeps_a_partial_last_line_for_later(tmp_path):
    path = tmp_path / EVENTS_FILE
    path.write_text('{"event": "run-start", "time": 1}\n{"event": "round-e')
    tail = JsonLinesTail(path)
    recs, reset = tail.read_new()
    assert [r["event"] for r in recs] == ["run-start"] and not reset
    with open(path, "a") as fh:
        fh.write('nd", "time": 2}\nnot json\n')
    recs, _ = tail.read_new()
    assert [r["event"] for r in recs] == ["round-end"] and tail.bad_lines == 1
    path.write_text('{"event": "run-start", "time": 3}\n')  # replaced: start over
    recs, reset = tail.read_new()
    assert reset and recs[0]["time"] == 3


def test_the_event_log_never_raises(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    rec = EventLog(blocked / "sub").append(RUN_START, run_key="k", odd=object())  # parent is a file
    assert rec["event"] == RUN_START
