"""report.html of a real DP + secure-aggregation federation (the CLI, Flower's Simulation Engine) in headless
Chromium, and its model card as the Hugging Face Hub reads it. The default run's report is checked in
tests/simulation/test_simulate_cli.py (same browser check)."""

from __future__ import annotations

import pytest

import json
import subprocess

from tests.report.browser import check_page
from tests.simulation.simtools import ROOT, fast_set_args, kill_new_ray, ray_processes, three_hospitals, xr0_cmd
from xr0_core.model_card import REQUIRED_SECTIONS, parse_card

pytestmark = pytest.mark.slow  # xr0 simulate in a subprocess and the page in headless Chromium


def test_dp_secagg_run_report_in_a_browser(hospitals, tmp_path):  # noqa: F811
    data = three_hospitals(hospitals, tmp_path / "data")
    out = tmp_path / "out"
    before = ray_processes()
    proc = subprocess.run(xr0_cmd("simulate", "--data", str(data), "--out", str(out), "--rounds", "2", "--dp",
                                  "--secagg", "--epsilon", "8", *fast_set_args()),
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    kill_new_ray(before)
    assert proc.returncode == 0, proc.stderr[-4000:]
    console = proc.stderr.splitlines()
    assert len(console) <= 15 and any("ε ≤" in line for line in console), proc.stderr
    html = (out / "report.html").read_text()
    for needle in ("<h2>Privacy</h2>", "budget left", "privacy_epsilon.png", "<h2>Secure aggregation</h2>",
                   "masked uploads", "error bound", "Summary: did pretraining help?", "95 % interval"):
        assert needle in html, needle
    page = check_page(out / "report.html", tmp_path / "browser")
    assert page.problems() == [], page.problems()
    assert {"summary", "privacy", "secure-aggregation"} <= set(page.sections)
    meta, sections = parse_card((out / "model_card.md").read_text())
    assert {"differential-privacy", "secure-aggregation"} <= set(meta["tags"])
    assert [s for s in sections if s in REQUIRED_SECTIONS] == list(REQUIRED_SECTIONS)
    card = json.loads((out / "model_card.json").read_text())
    assert card["secagg"]["rounds"] == 2 and all("epsilon" in s for s in card["sites"].values())
