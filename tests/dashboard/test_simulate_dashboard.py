"""``xr0 simulate --dashboard``: the same view, served by a child process for the command's lifetime, which
never outlives it (not even a ``simulate`` killed with SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.dashboard.live import wait_for
from tests.simulation.simtools import ROOT, fast_set_args, kill_new_ray, ray_processes, three_hospitals, xr0_cmd

pytestmark = pytest.mark.slow  # xr0 simulate and the dashboard in subprocesses


def _children_serving(out: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"xr0_core.dashboard.child" in cmd and str(out).encode() in cmd:
                pids.append(int(d.name))
    return pids


def _state(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=30) as resp:
        return json.loads(resp.read())


def test_simulate_dashboard_serves_the_run_and_stops_with_it(hospitals, tmp_path):
    data = three_hospitals(hospitals, tmp_path / "data")
    out = tmp_path / "out"
    before = ray_processes()
    err = open(tmp_path / "sim.err", "w+")
    sim = subprocess.Popen(xr0_cmd("simulate", "--data", str(data), "--out", str(out), "--rounds", "2",
                                   *fast_set_args(), "--dashboard", "--dashboard-port", "0"),
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        url_file = out / "logs" / "dashboard.url"
        url = wait_for(lambda: url_file.is_file() and url_file.read_text().strip(), "the dashboard's URL", limit=300)
        assert url.startswith("http://127.0.0.1:")
        seen = wait_for(lambda: (s := _state(url))["progress"]["status"] == "running" and s, "a running run")
        assert seen["progress"]["rounds_total"] == 2
        assert sim.wait(timeout=900) == 0, (tmp_path / "sim.err").read_text()[-3000:]
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait(timeout=60)
        kill_new_ray(before)
    console = (tmp_path / "sim.err").read_text()
    assert f"dashboard: {url}" in console
    assert _children_serving(out) == []  # stopped with the command
    with pytest.raises(OSError):
        _state(url)


PARENT = """
import sys, time
from pathlib import Path
from xr0_core.dashboard.serve import DashboardProcess
child = DashboardProcess(Path(sys.argv[1]), 0, Path(sys.argv[1]) / "dash.log")
print(child.start(), child.proc.pid, flush=True)
time.sleep(600)
"""


def test_the_dashboard_child_stops_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "run")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        url, pid = parent.stdout.readline().split()
        assert _state(url)["progress"]["status"] == "waiting"
        os.kill(parent.pid, signal.SIGKILL)  # no finally, no stop(): only the child's own watch remains
        parent.wait(timeout=30)
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(int(pid)), "the orphaned child to exit", limit=60)
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in _children_serving(tmp_path / "run"):
            os.kill(p, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
