"""`xr0 simulate` end to end on Flower's Simulation Engine: outputs, a kill + resume, timm export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tests.simulation.simtools import (
    FAST, ROOT, fast_set_args, kill_new_ray, ray_processes, three_hospitals, xr0_cmd,
)

pytestmark = pytest.mark.slow  # xr0 simulate in subprocesses (and the page in headless Chromium)

ROUNDS = 2


def simulate_args(data: Path, out: Path, *extra: str) -> list[str]:
    return xr0_cmd("simulate", "--data", str(data), "--out", str(out), "--rounds", str(ROUNDS),
                   *fast_set_args(), *extra)


@pytest.fixture(scope="module")
def finished_run(hospitals, tmp_path_factory):
    """One uninterrupted 3-hospital x 2-round run through the CLI; its JSON summary and folder."""
    base = tmp_path_factory.mktemp("sim")
    data = three_hospitals(hospitals, base / "data")
    before = ray_processes()
    proc = subprocess.run(simulate_args(data, base / "A", "--json", "--compare-pooled"), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    left = kill_new_ray(before)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not left, f"xr0 simulate left {len(left)} Ray processes"
    (base / "A" / "console.txt").write_text(proc.stderr)  # what a person saw
    return json.loads(proc.stdout), base / "A", data


def test_simulate_writes_every_promised_output(finished_run):
    summary, out, _ = finished_run
    assert summary["rounds_completed"] == ROUNDS
    assert [s["name"] for s in summary["sites"]] == ["site00", "site01", "site02"]
    assert all(Path(s["state_dir"]).is_dir() for s in summary["sites"])
    assert Path(summary["final_checkpoint"], "weights.safetensors").is_file()
    report = Path(summary["report"]).read_text()
    assert "curve_loss.png" in report and "site01" in report and (out / "curve_loss.png").is_file()
    card = json.loads((out / "model_card.json").read_text())
    assert card["rounds_completed"] == ROUNDS and card["sites"]["site00"]["rounds_ok"] == ROUNDS
    assert card["sites"]["site00"]["by_anatomy"] and card["evaluation"]["metrics"]
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    train = [r for r in rounds if r["kind"] == "train"]
    assert [r["round"] for r in train] == [1, 2]
    assert all(s["status"] == "ok" and s["metrics"]["num-examples"] > 0 for r in train for s in r["sites"])
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    # --compare-pooled: federated vs pooled (same total steps) vs random init, on held-out images.
    rows = {row["backbone"].split(" ")[0]: row for row in summary["comparison"]}
    assert set(rows) == {"federated", "pooled", "random", "raw"}  # raw pixels: the no-backbone baseline
    assert all(0 <= rows[k]["knn-anatomy"] <= 1 and 0 <= rows[k]["linear-anatomy"] <= 1 for k in rows)
    assert "pooled (12 steps)" in report  # 3 hospitals x 2 rounds x 2 local steps
    # Federated evaluation ran after the last round, for the global and the random-init backbone.
    evals = [r for r in rounds if r["kind"] == "evaluate"]
    assert evals and {"classification/anatomy/knn-accuracy", "classification/anatomy/random/knn-accuracy",
                      "classification/anatomy/pixels/knn-accuracy",
                      "segmentation/mask/dice-mean"} <= set(evals[-1]["metrics"]), sorted(evals[-1]["metrics"])
    # SSL health: every hospital's train reply carries it; the verdict is in the summary, report and card.
    assert all("health/rankme-cls" in s["metrics"] for r in train for s in r["sites"])
    # Two rounds from a random-init ViT: every hospital's probe features far from collapsed, too few losses for
    # "not learning" (< 10 a hospital): the verdict must be ok at every hospital.
    assert set(summary["health"]["sites"]) == {"site00", "site01", "site02"}
    assert all(v["status"] == "ok" and v["rankme-cls"] > 2.0 for v in summary["health"]["sites"].values())
    assert summary["health"]["status"] == "ok"
    assert "SSL health" in report and card["ssl_health"]["status"] == summary["health"]["status"]
    # Each hospital kept its own local SSL state; the weights moved away from the initial ones.
    from xr0_core.config import from_flat
    from xr0_core.ssl.factory import initial_shared_state

    cfg = from_flat({"preset": "cpu-tiny", **FAST})
    init = initial_shared_state(cfg)
    final = load_file(str(Path(summary["final_checkpoint"], "weights.safetensors")))
    assert set(final) == set(init)
    assert any(not np.allclose(final[k], init[k].numpy()) for k in final)


def test_console_is_short_and_the_rest_is_in_the_log(finished_run):
    _, out, _ = finished_run
    console = (out / "console.txt").read_text().splitlines()
    assert 3 <= len(console) <= 15, "\n".join(console)
    assert all(line.startswith("[xr0]") for line in console), "\n".join(console)
    assert console[-1].startswith("[xr0] done: 2 rounds") and str(out / "report.html") in console[-1]
    assert sum(line.startswith("[xr0] round ") for line in console) == ROUNDS  # one bar line per round
    assert not any("\x1b[" in line for line in console)  # no colour escapes
    log = (out / "logs" / "simulate.log").read_text()
    assert "ROUND 1/2" in log and "Starting XR0FedAvg strategy" in log  # Flower's banner went to the log


def test_report_and_model_card_of_a_run_are_readable(finished_run, tmp_path):
    from tests.report.browser import check_page
    from xr0_core.model_card import REQUIRED_SECTIONS, parse_card

    _, out, _ = finished_run
    html = (out / "report.html").read_text()
    for needle in ("Summary: did pretraining help?", "95 % interval", "curve_loss.png", "mean loss of a slice",
                   "<details><summary>"):
        assert needle in html, needle
    # 12 images per hospital: the forest plot when a hospital scored 2+ patients, else the honest verdict.
    assert "summary_forest.png" in html or "too few patients" in html
    page = check_page(out / "report.html", tmp_path / "browser")
    assert page.problems() == [], page.problems()
    assert page.images >= 2 and {"summary", "training", "evaluation"} <= set(page.sections)
    meta, sections = parse_card((out / "model_card.md").read_text())
    assert meta["license"] and "federated-learning" in meta["tags"] and meta["pipeline_tag"]
    assert [s for s in sections if s in REQUIRED_SECTIONS] == list(REQUIRED_SECTIONS)


def test_exported_backbone_loads_with_timm_and_gives_the_same_features(finished_run):
    summary, out, _ = finished_run
    from xr0_core.config import from_flat
    from xr0_core.eval.baseline import backbone_from_shared
    from xr0_core.export import load_exported

    cfg = from_flat({"preset": "cpu-tiny", **FAST})
    weights = load_file(str(Path(summary["final_checkpoint"], "weights.safetensors")))
    ours = backbone_from_shared(cfg, weights)
    theirs = load_exported(out / "backbone.safetensors").eval()
    x = torch.rand(2, 1, cfg.model.img_size, cfg.model.img_size)
    with torch.no_grad():
        torch.testing.assert_close(theirs.forward_features(x), ours.forward_features(x))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def test_killed_run_resumes_to_the_same_weights(finished_run, tmp_path):
    summary, _, data = finished_run
    out = tmp_path / "B"
    before = ray_processes()
    proc = subprocess.Popen(simulate_args(data, out), cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    seen = []
    try:
        for line in proc.stderr:  # the coordinator prints this line after round 1's checkpoint is on disk
            seen.append(line)
            if line.startswith("[xr0] round 1/2 ["):
                break
    finally:
        _kill_group(proc)
        kill_new_ray(before)  # a SIGKILLed driver cannot stop its Ray cluster: we do
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["round"] == 1, "".join(seen[-20:])

    # Without --resume the folder is protected; with a different config the resume is refused.
    refused = subprocess.run(simulate_args(data, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    changed = subprocess.run(simulate_args(data, out, "--resume", "--set", "train.lr=0.123"), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert changed.returncode != 0 and "train.lr" in changed.stderr

    before = ray_processes()
    resumed = subprocess.run(simulate_args(data, out, "--resume", "--json"), cwd=ROOT, capture_output=True,
                             text=True, timeout=900)
    left = kill_new_ray(before)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert not left, f"xr0 simulate left {len(left)} Ray processes"
    assert json.loads(resumed.stdout)["rounds_completed"] == ROUNDS
    a = load_file(str(Path(summary["final_checkpoint"], "weights.safetensors")))
    b = load_file(str(out / "checkpoints" / f"round-{ROUNDS:04d}" / "weights.safetensors"))
    for k in a:  # exact: batches are seeded by (seed, site, step) and replies are summed in a canonical order
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
