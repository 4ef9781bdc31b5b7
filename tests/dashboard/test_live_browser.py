"""A real headless Chromium on ``xr0 dashboard`` while ``xr0 simulate`` runs (issue 26, "Must show"): the round
counter advances without a reload, a refusing hospital's reason appears, ε per hospital matches its ledger, and
the page is no wider than a 1280 px window."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.dashboard.live import DashboardCommand, browser, console_errors, page_width, wait_for
from tests.simulation.simtools import ROOT, fast_set_args, kill_new_ray, ray_processes, three_hospitals, xr0_cmd
from xr0_core.privacy.ledger import PrivacyLedger, Release
from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values

pytestmark = pytest.mark.slow  # xr0 simulate (Flower + Ray) and xr0 dashboard in subprocesses, Chromium

SHOTS = ROOT / "tests" / "dashboard" / "screenshots"  # kept to look at (git-ignored)


def _site_policies(out):
    """site00 / site01: budget 8, ε leaves exactly (so the page's ε is the ledger's); site02 spent its budget
    of 1 in an earlier run, so it refuses every round with "privacy budget spent"."""
    for name in ("site00", "site01", "site02"):
        values = {"privacy.budget": 8.0 if name != "site02" else 1.0, "privacy.delta": 1e-5, "privacy.run-cap": "all",
                  "release.epsilon": "exact", "evaluation.after-budget-spent": True}
        save_policy(with_values(SitePolicy(), values), policy_path(out / "sites" / name))
    with PrivacyLedger(out / "sites" / "site02").transaction() as ledger:
        ledger.releases.append(Release("earlier-run", 1, 0.8, 0.5, 40, 1e-5, unit="patient"))


def _text(driver, css: str) -> str:
    return driver.find_element("css selector", css).text


def test_dashboard_follows_a_running_simulation(hospitals, tmp_path):
    data = three_hospitals(hospitals, tmp_path / "data")
    out = tmp_path / "out"
    _site_policies(out)
    dash = DashboardCommand(["dashboard", "--run-dir", str(out)], tmp_path / "dash")
    driver = browser()
    before = ray_processes()
    sim = None
    try:
        driver.get(dash.url)
        wait_for(lambda: _text(driver, "#status") == "waiting", "the page to show a run not started yet", limit=60)
        driver.execute_script("window.__xr0_same_page = 1")  # gone if anything reloads the page
        sim_out, sim_err = open(tmp_path / "sim.json", "w+"), open(tmp_path / "sim.err", "w+")  # no pipe to fill
        sim = subprocess.Popen(xr0_cmd("simulate", "--data", str(data), "--out", str(out), "--rounds", "3", "--dp",
                                       "--epsilon", "8", *fast_set_args(), "--json"),
                               cwd=ROOT, stdout=sim_out, stderr=sim_err, text=True)
        seen: list[int] = []

        def counter_moved() -> bool:
            value = int(_text(driver, "#round-counter"))
            if not seen or value != seen[-1]:
                seen.append(value)
            if sim.poll() is not None and value == 3:
                return True
            return len(set(seen) - {0}) >= 2

        wait_for(counter_moved, "the round counter to advance twice")
        reason = wait_for(lambda: "privacy budget" in (t := _text(driver, "tr[data-site='site02'] td.reason")) and t,
                          "site02's refusal reason")
        assert "round" in reason and "failed" in reason
        sim.wait(timeout=900)
        stdout, stderr = (tmp_path / "sim.json").read_text(), (tmp_path / "sim.err").read_text()
        assert sim.returncode == 0, stderr[-4000:]
        wait_for(lambda: _text(driver, "#status") == "completed", "the page to show the run completed", limit=120)
        wait_for(lambda: _text(driver, "#round-counter") == "3", "round 3 on the page", limit=60)
        assert driver.execute_script("return window.__xr0_same_page") == 1, "the page was reloaded"
        assert seen == sorted(seen) and len(set(seen) - {0}) >= 2, seen

        # ε per hospital: released exactly by site00 / site01 (their policies), read from every simulated
        # hospital's ledger for the "in its ledger" column (run.json) -- both equal the ledgers.
        summary = json.loads(stdout)
        assert {s["name"] for s in summary["sites"]} == {"site00", "site01", "site02"}
        wait_for(lambda: driver.find_elements("css selector", "tr[data-site='site02'] td.ledger-eps"),
                 "the ledger column after run.json", limit=60)
        for name in ("site00", "site01", "site02"):
            ledger = PrivacyLedger(out / "sites" / name).epsilon(delta=1e-5)
            row = f"tr[data-site='{name}']"
            cell = driver.find_element("css selector", f"{row} td.ledger-eps")
            assert float(cell.get_attribute("data-value")) == pytest.approx(ledger, rel=1e-12)
            assert cell.text == f"{ledger:.4f}"
            released = driver.find_element("css selector", f"{row} td.eps")
            if name == "site02":  # refused every round: it released nothing in this run
                assert released.get_attribute("data-value") == ""
            else:
                assert 0 < ledger <= 8.0
                assert float(released.get_attribute("data-value")) == pytest.approx(ledger, rel=1e-12)
                assert released.text == f"{ledger:.4f}"

        assert page_width(driver) <= 1280, f"page is {page_width(driver)} px wide in a 1280 px window"
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(1280, min(height + 120, 8000))
        assert page_width(driver) <= 1280
        shot = tmp_path / "dashboard-run.png"
        driver.save_screenshot(str(shot))
        SHOTS.mkdir(exist_ok=True)
        shutil.copy(shot, SHOTS / shot.name)
        assert console_errors(driver) == []
    finally:
        driver.quit()
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait(timeout=60)
        dash.stop()
        kill_new_ray(before)
