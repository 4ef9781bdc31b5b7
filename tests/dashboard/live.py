"""Helpers for the dashboard tests: a dashboard command in a subprocess, a real headless Chromium driven
through selenium and chromedriver (Debian ``chromium`` + ``chromium-driver``), and waiting for a condition.

No skips: without Chromium or chromedriver these fail and say how to get them (scripts/test.sh installs both
where it can), as tests/report/browser.py does for the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tests.report.browser import chromium
from tests.simulation.simtools import ROOT, xr0_cmd

WIDTH = 1280


def chromedriver() -> str:
    for name in (os.environ.get("XR0_CHROMEDRIVER", ""), "chromedriver", "/usr/lib/chromium/chromedriver"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise AssertionError("chromedriver is needed to drive headless Chromium against the dashboard and none was "
                         "found: `apt-get install -y chromium-driver` (scripts/test.sh does this when it can), or "
                         "set XR0_CHROMEDRIVER")


def browser(width: int = WIDTH, height: int = 900):
    """A headless Chromium (selenium WebDriver) with a ``width`` x ``height`` window; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                 f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.binary_location = chromium()
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver()), options=opts)


def wait_for(condition: Callable[[], Any], what: str, limit: float = 600.0, every: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail naming ``what`` after ``limit``
    seconds. A generous bound on waiting for an event, not a claim about speed."""
    deadline = time.monotonic() + limit
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - an element not drawn yet
            last_exc = exc
        threading.Event().wait(every)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


class DashboardCommand:
    """``xr0 dashboard ...`` / ``xr0 site dashboard ...`` in a subprocess on a free port; ``url`` once it listens."""

    def __init__(self, args: list[str], work: Path) -> None:
        self.url_file = work / "dashboard.url"
        self.log = work / "dashboard.log"
        work.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(xr0_cmd(*args, "--port", "0", "--url-file", str(self.url_file)), cwd=ROOT,
                                         stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = wait_for(lambda: self.url_file.is_file() and self.url_file.read_text().strip()
                            or self._dead(), "the dashboard to listen", limit=180)

    def _dead(self) -> str:
        if self.proc.poll() is not None:
            raise AssertionError(f"the dashboard exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def page_width(driver) -> int:
    return int(driver.execute_script("return document.documentElement.scrollWidth"))


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
