"""`xr0 coordinator connect` writes Flower 1.42's connection config under FLWR_HOME only; `status` maps run
states to exit codes (the real SuperLink path is in test_deployment.py)."""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from server.deploy_cmd import EXIT_OK, EXIT_RUN_FAILED, run_outcome
from xr0_core.deploy.certs import make_ca

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the xr0 command in a subprocess
def test_connect_writes_flwr_home_only(tmp_path):
    make_ca(tmp_path / "certs")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "cli", "coordinator", "connect", "--name", "xr0",
           "--superlink", "127.0.0.1:8000", "--root-certificates", str(tmp_path / "certs" / "ca.crt")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    conf = tomllib.loads((tmp_path / "flwr" / "config.toml").read_text())
    assert conf["superlink"]["xr0"]["address"] == "127.0.0.1:8000"
    assert conf["superlink"]["xr0"]["root-certificates"] == str((tmp_path / "certs" / "ca.crt").resolve())
    assert not (tmp_path / "home" / ".flwr").exists()
    assert subprocess.run(["git", "diff", "--quiet", "pyproject.toml"], cwd=ROOT).returncode == 0
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "federations" not in pyproject["tool"]["flwr"]  # nothing for `flwr run` to migrate (and rewrite)


@pytest.mark.slow  # the xr0 command in a subprocess
def test_connect_needs_tls_or_explicit_insecure(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}
    proc = subprocess.run([sys.executable, "-m", "cli", "coordinator", "connect", "--name", "x",
                           "--superlink", "https://h:8000"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "without a scheme" in proc.stderr


def test_run_outcome():
    assert run_outcome("finished:completed") == EXIT_OK
    assert run_outcome("finished:failed") == EXIT_RUN_FAILED
    assert run_outcome("finished:stopped") == EXIT_RUN_FAILED
    assert run_outcome("running") == EXIT_OK
