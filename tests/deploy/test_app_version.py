"""The app version a site approves: the same code gives the same version wherever it is unpacked, any code
change gives another, docs do not; the ClientApp's refusal is the site policy's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xr0_core.deploy.appversion import PACKAGES, app_version, app_version_of
from xr0_core.deploy.runbook import RunbookError, steps
from xr0_core.site.policy import PolicyRefusal, SitePolicy, with_values
from xr0_core.site.refusals import check_bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy(tmp_path):
    dest = tmp_path / "app"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_version_follows_code_not_location_or_docs(copy):
    assert app_version_of(copy) == app_version_of(ROOT) == app_version()
    (copy / "README.md").write_text("docs change nothing")
    assert app_version_of(copy) == app_version()
    with open(copy / "client" / "app.py", "a") as fh:
        fh.write("\n# a one-line change\n")
    changed = app_version_of(copy)
    assert changed != app_version() and changed.split("+")[0] == app_version().split("+")[0]


def test_policy_allow_list():
    check_bundle(SitePolicy(), app_version())  # empty list: any version
    pinned = with_values(SitePolicy(), {"apps.allowed-versions": app_version()})
    check_bundle(pinned, app_version())
    with pytest.raises(PolicyRefusal, match="not approved"):
        check_bundle(pinned, "0.1.0+0000000000000000")


@pytest.mark.slow  # the xr0 command in a subprocess
def test_cli_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "cli", "site", "app-version", "--app", str(ROOT)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == app_version()


def test_runbooks_have_every_step_the_test_runs():
    coord = steps(ROOT / "docs" / "deploy-coordinator.md")
    site = steps(ROOT / "docs" / "deploy-hospital.md")
    assert {"certs-ca", "certs-superlink", "superlink", "connect", "register", "run", "status"} <= set(coord)
    assert {"site-key", "policy", "doctor", "supernode"} <= set(site)
    sl = coord["superlink"]
    for flag in ("--ssl-certfile", "--enable-supernode-auth", "--database", "--disable-runtime-dependency-installation"):
        assert flag in sl
    assert "--insecure" not in sl and "--insecure" not in site["supernode"]


def test_runbook_parser_refuses_duplicates(tmp_path):
    doc = tmp_path / "r.md"
    doc.write_text("<!-- step: a -->\n```bash\necho 1\n```\n\n<!-- step: a -->\n```bash\necho 2\n```\n")
    with pytest.raises(RunbookError, match="twice"):
        steps(doc)
