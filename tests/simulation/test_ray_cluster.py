"""`xr0 simulate --ray-address` attaches to a Ray cluster someone started (`ray start --head`), with a GPU share
per hospital, and leaves the cluster running; the test stops the cluster it started, pass or fail."""

from __future__ import annotations

import pytest

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.simulation.simtools import ROOT, fast_set_args, xr0_cmd

pytestmark = pytest.mark.slow  # a Ray cluster and xr0 simulate in subprocesses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_pids(tag: str) -> list[int]:
    """Processes of OUR cluster only: every Ray process names its session folder, under our temp dir."""
    # -ww: without it ps cuts command lines at 80 columns when not writing to a terminal, before the tag.
    out = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout
    me = os.getpid()
    return [int(pid) for pid, _, args in (line.strip().partition(" ") for line in out.splitlines())
            if tag in args and int(pid) != me]


def _stop_cluster(tag: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _cluster_pids(tag):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _cluster_pids(tag) and time.monotonic() < deadline:
            time.sleep(0.2)  # waiting for exit, not a timing assumption
    shutil.rmtree(tag, ignore_errors=True)


def test_simulate_attaches_to_a_local_ray_head(hospitals, tmp_path):
    tag = f"/tmp/rx{secrets.token_hex(3)}"  # short: Ray's unix socket paths must stay under ~107 chars
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    data = tmp_path / "data"
    data.mkdir()
    for site in sorted(p for p in hospitals.iterdir() if p.is_dir())[:2]:
        (data / site.name).symlink_to(site, target_is_directory=True)
    ray = str(Path(sys.executable).parent / "ray")
    try:
        # One logical GPU on a CPU machine: Ray only does the bookkeeping, so --gpus-per-client is exercised.
        started = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                                  "--num-cpus=2", "--num-gpus=1", "--include-dashboard=false",
                                  "--disable-usage-stats", f"--temp-dir={tag}"],
                                 env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stderr[-3000:]
        proc = subprocess.run(xr0_cmd("simulate", "--data", str(data), "--out", str(tmp_path / "out"), "--rounds", "1",
                                      "--ray-address", f"127.0.0.1:{port}", "--gpus-per-client", "0.5", "--json",
                                      *fast_set_args(), "--set", "eval.tasks=probe"),
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        summary = json.loads(proc.stdout)
        assert summary["rounds_completed"] == 1
        assert [s["name"] for s in summary["sites"]] == sorted(p.name for p in data.iterdir())
        # Attached, not owned: the cluster is still up after the simulation.
        assert _cluster_pids(tag), "xr0 simulate stopped a Ray cluster it did not start"

        # Issue 27 on the same cluster: built-in hospitals written lazily, a fraction of them sampled per round.
        out = tmp_path / "out-lazy"
        proc = subprocess.run(xr0_cmd("simulate", "--sites", "8", "--images-per-site", "16", "--out", str(out),
                                      "--rounds", "1", "--ray-address", f"127.0.0.1:{port}", "--json",
                                      *fast_set_args(), "--set", "eval.tasks=probe",
                                      "--set", "federation.fraction-train=0.25",
                                      "--set", "federation.fraction-evaluate=0.25"),
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        rounds = json.loads((out / "metrics.json").read_text())["rounds"]
        train = [r for r in rounds if r["kind"] == "train"]
        assert len(train) == 1 and [s["status"] for s in train[0]["sites"]] == ["ok", "ok"], train
        evaluated = {s["name"] for r in rounds if r["kind"] == "evaluate" for s in r["sites"]}
        assert 0 < len(evaluated) <= 2, rounds
        written = {d.name for d in (out / "hospitals").iterdir() if (d / "manifest.csv").is_file()}
        assert {s["name"] for s in train[0]["sites"]} | evaluated <= written and len(written) <= 4, written
        assert _cluster_pids(tag)
    finally:
        _stop_cluster(tag)
    assert not _cluster_pids(tag)


def test_engine_passes_address_and_gpu_share(tmp_path, monkeypatch):
    """Without a cluster: what run_federation hands Flower's engine (Ray refuses num_cpus with an address)."""
    import importlib

    rs = importlib.import_module("flwr.simulation.run_simulation")  # the module, not the function it exports

    from simulation.engine import run_federation
    from xr0_core.config import from_flat

    seen = {}
    monkeypatch.setattr(rs, "_run_simulation", lambda **kw: seen.update(kw))
    cfg = from_flat({})
    run_federation(cfg, 2, app_dir=tmp_path / "app", server_app=object(), client_app=object(), total_cpus=4,
                   ray_address="127.0.0.1:6379", gpus_per_client=0.25)
    backend = seen["backend_config"]
    assert backend["init_args"] == {"address": "127.0.0.1:6379", "configure_logging": False}
    assert backend["client_resources"] == {"num_cpus": 1, "num_gpus": 0.25}
    run_federation(cfg, 2, app_dir=tmp_path / "app", server_app=object(), client_app=object(), total_cpus=4)
    local = seen["backend_config"]["init_args"]
    # "local": a new Ray instance, never a cluster that someone else started on this machine with `ray start`
    assert local["num_cpus"] == 4 and local["address"] == "local"
    assert seen["backend_config"]["client_resources"]["num_gpus"] == 0.0
