"""`xr0 simulate` with a symlinked hospital trains under DP and reports its epsilon by the link's name; a
federation in which no hospital can train stops after the first such round with a non-zero exit."""

from __future__ import annotations

import pytest

import json
import subprocess

from tests.simulation.simtools import ROOT, fast_set_args, kill_new_ray, ray_processes, xr0_cmd

from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values

pytestmark = pytest.mark.slow  # xr0 simulate in subprocesses


def _run(args, timeout=900):
    before = ray_processes()
    try:
        return subprocess.run(xr0_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    finally:
        kill_new_ray(before)


def test_symlinked_hospital_trains_under_dp_and_reports_its_epsilon(hospitals, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mhh").symlink_to(hospitals / "site03", target_is_directory=True)  # link name != target name
    out = tmp_path / "out"
    proc = _run(["simulate", "--data", str(data), "--out", str(out), "--rounds", "1", "--dp", "--epsilon", "8",
                 "--set", "eval.tasks=probe", *fast_set_args(), "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    (site,) = summary["sites"]
    assert site["name"] == "mhh" and 0 < site["epsilon"] <= 8.0
    assert (out / "sites" / "mhh" / "privacy" / "ledger.json").is_file()
    assert not (out / "sites" / "site03").exists()  # no second state folder under the target's name


def test_a_federation_that_cannot_train_stops_loudly(hospitals, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("site00", "site01"):
        (data / name).symlink_to(hospitals / name, target_is_directory=True)
    out = tmp_path / "out"
    for name in ("site00", "site01"):  # both hospitals require secure aggregation; the run is plain
        save_policy(with_values(SitePolicy(), {"secagg.required": True}), policy_path(out / "sites" / name))
    proc = _run(["simulate", "--data", str(data), "--out", str(out), "--rounds", "3", *fast_set_args(), "--json"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["status"] == "stopped" and "no hospital trained" in summary["stop_reason"]
    assert "requires secure aggregation" in summary["stop_reason"]
    assert summary["backbone"] is None and not (out / "backbone.safetensors").exists()
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1]  # stopped after the first round in which nobody trained
    assert "xr0: error: stopped after round 1" in proc.stderr
