"""What the live dashboard adds to a simulation's wall time (issue 26: target under 1 %).

The same ``xr0 simulate`` (same seed, synthetic hospitals, fresh output folder each time) runs ``--pairs`` times
without and with ``--dashboard``, interleaved (off, on, on, off, ...) so that drift of a shared machine hits both
alike. In the runs with it a headless Chromium (selenium) keeps the page open for the whole run, as a person
watching would, unless ``--no-browser``. Printed and written to ``bench/results/dashboard.json``:

- ``wall_ratio``: median wall time with the dashboard / median without (the number the issue asks for), with
  every single wall time so the spread between repeats of the same configuration is visible;
- ``dashboard_cpu_s``: CPU seconds (user + system) of the dashboard process, sampled from ``/proc`` every
  0.2 s until it exits, and as a fraction of the run's wall time (``dashboard_cpu_fraction``): its cost on
  the simulation's machine, free of the run-to-run noise of the wall times;
- ``browser_cpu_s``: the same for Chromium's processes (a person's browser usually runs elsewhere);
- ``bench_cpu_s``: this script's own CPU in each run (its samplers and selenium), so its share is visible too.

Usage: ``python bench/dashboard.py [--pairs 2] [--rounds 3] [--sites 3] [--set KEY=VALUE ...] [--no-browser]``.
No assertions: timings are facts of the machine; the JSON keeps the command line and the host's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/*/stat parent ids)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


class CpuSampler(threading.Thread):
    """Keeps the last CPU reading of every process ``find()`` returns, until stopped (a process's last reading
    before it exits is at most one period old). ``find`` (a scan of /proc) runs every ``refresh`` seconds, or
    every period until it finds something: scanning /proc costs this process more than reading a few stats,
    and this process shares the machine with the simulation it measures."""

    def __init__(self, find, period: float = 0.5, refresh: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.find, self.period, self.refresh = find, period, refresh
        self.last: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        pids: list[int] = []
        found_at = -1e9
        while not self._halt.wait(self.period):
            if not pids or time.monotonic() - found_at > self.refresh:
                pids, found_at = self.find(), time.monotonic()
            for pid in pids:
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    self.last[pid] = cpu

    def total(self) -> float:
        self._halt.set()
        self.join(timeout=5)
        return sum(self.last.values())


def dashboard_pids(out: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"xr0_core.dashboard.child" in cmd and str(out).encode() in cmd:
            pids.append(int(d.name))
    return pids


def one_run(args, dashboard: bool, work: Path) -> dict:
    out = work / f"run-{'on' if dashboard else 'off'}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "cli", "simulate", "--out", str(out), "--sites", str(args.sites), "--rounds",
           str(args.rounds), "--seed", "0"]
    for item in args.set:
        cmd += ["--set", item]
    if dashboard:
        cmd += ["--dashboard", "--dashboard-port", "0"]
    log = open(out.with_suffix(".log"), "w")
    own0 = time.process_time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    dash = CpuSampler(lambda: dashboard_pids(out)) if dashboard else None
    driver, browser_cpu = None, None
    if dash is not None:
        dash.start()
        if args.browser:
            url_file = out / "logs" / "dashboard.url"
            while proc.poll() is None and not (url_file.is_file() and url_file.read_text().strip()):
                time.sleep(0.1)
            if proc.poll() is None:
                sys.path.insert(0, str(ROOT))
                from tests.dashboard.live import browser

                driver = browser()
                driver.get(url_file.read_text().strip())
                service_pid = driver.service.process.pid
                browser_cpu = CpuSampler(lambda: [service_pid, *children(service_pid)])
                browser_cpu.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    log.close()
    if driver is not None:
        driver.quit()
    result = {"dashboard": dashboard, "wall_s": round(wall, 2), "rc": rc, "loadavg_1min_at_end": os.getloadavg()[0],
              "bench_cpu_s": round(time.process_time() - own0, 3)}
    if dash is not None:
        result["dashboard_cpu_s"] = round(dash.total(), 3)
    if browser_cpu is not None:
        result["browser_cpu_s"] = round(browser_cpu.total(), 3)
    if rc != 0:
        result["log_tail"] = out.with_suffix(".log").read_text()[-2000:]
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to xr0 simulate")
    p.add_argument("--no-browser", dest="browser", action="store_false", help="no Chromium on the page")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    args = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="xr0-dash-bench-") as tmp:
        for i in range(args.pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            for on in order:
                runs.append(one_run(args, on, Path(tmp)))
    off = [r["wall_s"] for r in runs if not r["dashboard"] and r["rc"] == 0]
    on = [r for r in runs if r["dashboard"] and r["rc"] == 0]
    summary = {
        "command": " ".join(sys.argv),
        "loadavg_at_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "runs": runs,
        "wall_off_s": off,
        "wall_on_s": [r["wall_s"] for r in on],
        "wall_ratio": (round(statistics.median(r["wall_s"] for r in on) / statistics.median(off), 4)
                       if off and on else None),
        "dashboard_cpu_s": [r["dashboard_cpu_s"] for r in on],
        "dashboard_cpu_fraction": [round(r["dashboard_cpu_s"] / r["wall_s"], 5) for r in on],
        "browser_cpu_s": [r.get("browser_cpu_s") for r in on],
        "browser_cpu_fraction": [round(r["browser_cpu_s"] / r["wall_s"], 5) if r.get("browser_cpu_s") else None
                                 for r in on],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
