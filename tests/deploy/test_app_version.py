"""The app version a site approves, as the ``xr0 site app-version`` command prints it (the launcher's refusals:
tests/client/test_launcher.py), and the runbooks' steps the deployment test runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from client.bundle import checkout_fab, checkout_version
from xr0_core.deploy.runbook import RunbookError, steps

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the xr0 command in a subprocess (and two bundle builds of the checkout)
def test_cli_prints_the_version_of_the_bundle_flwr_run_sends(tmp_path):
    fab = tmp_path / "app.fab"
    fab.write_bytes(checkout_fab(ROOT))  # the bytes `flwr run ROOT` submits
    expected = checkout_version(ROOT)
    for args in (["--app", str(ROOT)], ["--fab", str(fab)]):
        out = subprocess.run([sys.executable, "-m", "cli", "site", "app-version", *args], cwd=ROOT,
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == expected, (args, out.stderr[-2000:])
    out = subprocess.run([sys.executable, "-m", "cli", "site", "app-version", "--app", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no pyproject.toml" in out.stderr


def test_runbooks_have_every_step_the_test_runs():
    coord = steps(ROOT / "docs" / "deploy-coordinator.md")
    site = steps(ROOT / "docs" / "deploy-hospital.md")
    assert {"certs-ca", "certs-superlink", "superlink", "connect", "register", "run", "status"} <= set(coord)
    assert {"site-key", "policy", "doctor", "supernode", "clientapp"} <= set(site)
    sl = coord["superlink"]
    for flag in ("--ssl-certfile", "--enable-supernode-auth", "--database", "--disable-runtime-dependency-installation"):
        assert flag in sl
    assert "--insecure" not in sl and "--insecure" not in site["supernode"]
    # The approved-code flow: Flower starts no ClientApp; the hospital's own launcher does, from its install.
    assert "--isolation process" in site["supernode"] and "xr0 site clientapp" in site["clientapp"]
    secret = "--superexec-auth-secret-file"
    assert secret in site["supernode"] and secret in site["clientapp"]


def test_runbook_parser_refuses_duplicates(tmp_path):
    doc = tmp_path / "r.md"
    doc.write_text("<!-- step: a -->\n```bash\necho 1\n```\n\n<!-- step: a -->\n```bash\necho 2\n```\n")
    with pytest.raises(RunbookError, match="twice"):
        steps(doc)
