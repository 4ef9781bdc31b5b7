"""Both dashboard pages in headless Chromium, without a federation: ``xr0 site dashboard`` shows the ε of
``xr0 privacy --json`` and follows a new release; ``xr0 dashboard`` shows a hostile hospital's reason as text
(never markup) and a new round without a reload; neither is wider than 1280 px nor logs a console error."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.dashboard.live import DashboardCommand, browser, console_errors, page_width, wait_for
from tests.dashboard.sitefixture import hospital
from tests.report import fakerun
from tests.simulation.simtools import ROOT, xr0_cmd
from xr0_core.atomic import atomic_write_json
from xr0_core.privacy.ledger import PrivacyLedger, Release
from xr0_core.run_events import ROUND_END, RUN_START, EventLog

pytestmark = pytest.mark.slow  # xr0 commands in subprocesses and headless Chromium

SHOTS = ROOT / "tests" / "dashboard" / "screenshots"


def _privacy_epsilon(state) -> float:
    proc = subprocess.run(xr0_cmd("privacy", "--state-dir", str(state), "--json"), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["epsilon"]


def _keep(driver, tmp_path, name):
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1280, min(height + 120, 8000))
    assert page_width(driver) <= 1280, f"page is {page_width(driver)} px wide in a 1280 px window"
    driver.save_screenshot(str(tmp_path / name))
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / name, SHOTS / name)


def test_site_dashboard_shows_the_epsilon_of_xr0_privacy_json(tmp_path):
    state = hospital(tmp_path / "site")
    eps = _privacy_epsilon(state)
    dash = DashboardCommand(["site", "dashboard", "--state-dir", str(state)], tmp_path / "dash")
    driver = browser()
    try:
        driver.get(dash.url)
        cell = wait_for(lambda: (e := driver.find_element("css selector", "#epsilon")).get_attribute("data-value") and e,
                        "the ledger's epsilon on the page", limit=120)
        assert float(cell.get_attribute("data-value")) == eps
        assert cell.text == f"{eps:.4f}"
        refusals = driver.find_element("css selector", "#refusals-table").text
        assert "site policy: privacy budget spent" in refusals
        assert page_width(driver) <= 1280
        driver.execute_script("window.__xr0_same_page = 1")
        with PrivacyLedger(state).transaction() as ledger:  # the hospital trains another round
            ledger.releases.append(Release("run-c", 1, 1.0, 0.3, 20, 1e-5, time=500.0, unit="patient"))
        new = _privacy_epsilon(state)
        assert new > eps
        wait_for(lambda: driver.find_element("css selector", "#epsilon").get_attribute("data-value") == repr(new),
                 "the new release on the page", limit=120)
        assert driver.execute_script("return window.__xr0_same_page") == 1
        _keep(driver, tmp_path, "dashboard-site.png")
        assert console_errors(driver) == []
    finally:
        driver.quit()
        dash.stop()


HOSTILE = '<img src=x onerror="window.__xr0_pwned=1"><script>window.__xr0_pwned=1</script>'


def test_run_dashboard_shows_hostile_reasons_as_text_and_new_rounds_live(tmp_path):
    out = tmp_path / "run"
    history = fakerun.history(dp=True, secagg=True, rounds=3)
    train = [r for r in history if r["kind"] == "train"]
    train[0]["sites"][2].update(status="failed", reason=HOSTILE, metrics={})
    events = EventLog(out)
    events.append(RUN_START, run_key="abc", rounds=3, done=0, config=fakerun.summary(dp=True, secagg=True)["config"])
    atomic_write_json(out / "metrics.json", {"run_key": "abc", "rounds": train[:1]})
    events.append(ROUND_END, round=1, kind="train", seconds=4.2, updated=True)
    dash = DashboardCommand(["dashboard", "--run-dir", str(out)], tmp_path / "dash")
    driver = browser()
    try:
        driver.get(dash.url)
        wait_for(lambda: driver.find_element("css selector", "#round-counter").text == "1", "round 1", limit=120)
        driver.execute_script("window.__xr0_same_page = 1")
        reason = driver.find_element("css selector", "tr[data-site='site02'] td.reason")
        assert HOSTILE in reason.text  # shown as the text the hospital sent
        assert driver.execute_script("return window.__xr0_pwned") is None
        assert driver.find_elements("css selector", "#hospitals-grid img, #rounds-grid img, main script") == []
        for r in (2, 3):
            atomic_write_json(out / "metrics.json", {"run_key": "abc", "rounds": train[:r]})
            events.append(ROUND_END, round=r, kind="train", seconds=4.2, updated=True)
            wait_for(lambda: driver.find_element("css selector", "#round-counter").text == str(r), f"round {r}",
                     limit=120)
        assert driver.execute_script("return window.__xr0_same_page") == 1
        assert "secure aggregation" in driver.find_element("css selector", "#mode").text
        assert driver.find_element("css selector", "#secagg-table").text.count("\n") >= 3  # header + 3 rounds
        _keep(driver, tmp_path, "dashboard-run-fake.png")
        assert console_errors(driver) == []
    finally:
        driver.quit()
        dash.stop()
