"""`xr0 simulate --dp`: epsilon per hospital per round, a hospital with a spent budget refuses, the round
finishes with the others and the report names it; a batch-coupled loss fails before Ray starts."""

from __future__ import annotations

import pytest

import json
import subprocess

from tests.simulation.simtools import ROOT, fast_set_args, kill_new_ray, ray_processes, three_hospitals, xr0_cmd

from xr0_core.privacy.ledger import PrivacyLedger, Release
from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values

pytestmark = pytest.mark.slow  # xr0 simulate (Flower's Simulation Engine on Ray) in a subprocess


def test_simulate_dp_reports_epsilon_and_a_refusing_hospital(hospitals, tmp_path):
    data = three_hospitals(hospitals, tmp_path / "data")
    out = tmp_path / "out"
    # site02 spent its budget in an earlier run (its own ledger, on its own disk).
    state02 = out / "sites" / "site02"
    save_policy(with_values(SitePolicy(), {"privacy.budget": 1.0, "privacy.delta": 1e-5}), policy_path(state02))
    with PrivacyLedger(state02).transaction() as ledger:
        ledger.releases.append(Release("earlier-run", 1, 0.8, 0.5, 40, 1e-5, unit="patient"))
    before = ray_processes()
    proc = subprocess.run(xr0_cmd("simulate", "--data", str(data), "--out", str(out), "--rounds", "2", "--dp",
                                  "--epsilon", "8", *fast_set_args(), "--json"),
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    kill_new_ray(before)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    eps = {s["name"]: s["epsilon"] for s in summary["sites"]}
    assert 0 < eps["site00"] <= 8.0 and 0 < eps["site01"] <= 8.0
    assert eps["site02"] == PrivacyLedger(state02).epsilon(delta=1e-5)  # nothing new was spent
    rounds = [r for r in json.loads((out / "metrics.json").read_text())["rounds"] if r["kind"] == "train"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        by = {s["name"]: s for s in r["sites"]}
        assert by["site00"]["status"] == by["site01"]["status"] == "ok"
        # An error reply carries no metrics: the client tags its reason, and the coordinator names it from the tag.
        failed = [s for s in r["sites"] if s["status"] == "failed"]
        assert len(failed) == 1 and "privacy budget" in failed[0]["reason"] and failed[0]["name"] == "site02"
        assert "simulated partition 2" in failed[0]["reason"]
        assert "epsilon" in by["site00"]["metrics"] and not any(k.startswith("loss") for k in by["site00"]["metrics"])
    report = (out / "report.html").read_text()
    assert "<h2>Privacy</h2>" in report and "simulated partition 2" in report
    card = json.loads((out / "model_card.json").read_text())  # epsilon ends in the model card (D3, D11)
    # The card shows what the hospital released: its ledger's epsilon rounded *up* to the policy's step (0.1 by
    # default, release.epsilon); the summary reads the simulated hospitals' own ledgers, exactly.
    released = card["sites"]["site00"]["epsilon"]
    assert card["differential_privacy"] and eps["site00"] <= released < eps["site00"] + 0.1 + 1e-9
    assert released == pytest.approx(round(released, 1), abs=1e-9)
    assert "privacy budget" in card["sites"]["site02"]["last_problem"]


def test_simulate_dp_with_koleo_fails_fast(hospitals, tmp_path):
    data = three_hospitals(hospitals, tmp_path / "data")
    before = ray_processes()
    proc = subprocess.run(xr0_cmd("simulate", "--data", str(data), "--out", str(tmp_path / "o"), "--dp",
                                  "--set", "ssl.koleo-weight=0.3"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "KoLeo" in proc.stderr and "ssl.koleo-weight = 0" in proc.stderr
    assert ray_processes() - before == set()  # failed before starting Ray
