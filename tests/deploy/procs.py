"""Process bookkeeping for tests that start real Flower processes: every process is tagged with an
environment variable, started in its own process group, and killed (with anything it spawned, even
``flwr-clientapp`` / ``flwr-serverapp`` children that left the group) when the test ends."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

TAG = "XR0_DEPLOY_TEST_TAG"


def tagged_pids(tag: str) -> set[int]:
    """Live processes whose environment carries ``TAG=tag`` (children inherit it)."""
    needle = f"{TAG}={tag}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in env.split(b"\0"):
            found.add(int(entry.name))
    return found


class Procs:
    """Start long-running commands; :meth:`kill_all` ends them and everything they spawned."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.started = env, logs, []  # type: ignore[var-annotated]
        self.tag = env[TAG]

    def start(self, name: str, command: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(["bash", "-c", command], env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.logs)
        self.started.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def kill_group(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_all(self) -> set[int]:
        """SIGTERM each group, then SIGKILL whatever is still tagged; return the pids that needed SIGKILL
        after leaving their group (empty when process groups held everything)."""
        for _, proc in self.started:
            self.kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(p.poll() is None for _, p in self.started) and time.monotonic() < deadline:
            threading.Event().wait(0.2)  # polling for exit, not a timing assumption
        for _, proc in self.started:
            self.kill_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        strays = tagged_pids(self.tag)
        left, deadline = set(strays), time.monotonic() + 10
        while left and time.monotonic() < deadline:
            # A killed process stays listed until it is gone, and one forked by a dying parent appears
            # after the first look: kill what is still there until nothing is (or 10 s have passed).
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            threading.Event().wait(0.2)  # polling for exit, not a timing assumption
            left = tagged_pids(self.tag)
            strays |= left
        return strays
