"""Helpers for simulation tests: a fast config, Ray process accounting, the xr0 command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]

# Small enough for 2 CPU cores, big enough that every code path (multi-crop, iBOT masks, EMA) runs.
FAST = {
    "train.local-steps": 2,
    "train.batch-size": 4,
    "ssl.n-local-crops": 2,
    "model.head-out-dim": 256,
    "model.ibot-out-dim": 256,
    "model.head-hidden-dim": 64,
}


def fast_set_args() -> list[str]:
    return [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]


def three_hospitals(hospitals: Path, dest: Path) -> Path:
    """A data root holding links to the first three hospitals."""
    dest.mkdir(parents=True, exist_ok=True)
    for site in sorted(p for p in hospitals.iterdir() if p.is_dir())[:3]:
        (dest / site.name).symlink_to(site, target_is_directory=True)
    return dest


# Every process this test session starts (and every Ray process those start: Ray passes its driver's environment
# down) carries this marker, so the accounting below sees only OUR Ray processes. Without it, two test runs on
# one machine (two checkouts, CI beside a developer) killed each other's Ray actors in their clean-up.
RAY_OWNER_VAR = "XR0_TEST_RAY_OWNER"
RAY_OWNER = os.environ.setdefault(RAY_OWNER_VAR, f"{os.getpid()}-{os.urandom(4).hex()}")


def _owned_by_us(pid: int) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return False
    return f"{RAY_OWNER_VAR}={RAY_OWNER}".encode() in env.split(b"\0")


def ray_processes() -> set[int]:
    """Live Ray processes (raylet, GCS, workers, dashboard) started under this test session's marker."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if any(tag in args for tag in ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard")):
            if _owned_by_us(int(pid)):
                pids.add(int(pid))
    return pids


def wait_ray_exit(before: set[int], seconds: float = 20.0) -> set[int]:
    """Ray processes started since ``before`` that are still alive after up to ``seconds`` of exiting."""
    import threading
    import time

    deadline = time.monotonic() + seconds
    left = ray_processes() - before
    while left and time.monotonic() < deadline:
        threading.Event().wait(0.25)  # polling for process exit, not a timing assumption
        left = ray_processes() - before
    return left


def kill_new_ray(before: set[int]) -> set[int]:
    """Kill Ray processes started since ``before`` that did not exit by themselves; return their pids."""
    left = wait_ray_exit(before)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def xr0_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]
