"""The hospital's launcher (``xr0 site clientapp``) decides which code answers, before any bundle code runs
(issue 21 row 1).

The two bundles of the audit: (a) a copy of the approved packages plus an entry module of the coordinator's
own, with the entry-point mapping pointed at it; (b) only a modified ``client/``, so that ``xr0_core`` (and
the old source-only hash) would come from the hospital's reviewed install. Both carry code that writes a
marker file when it is imported. The launcher refuses both with the reason, the marker never appears, and
the hospital's installed ClientApp is not called; under Flower's own loader (what ``flwr-clientapp`` does)
the same bundles do run their code (the control: the marker appears).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.approval import set_verified, verified_version
from client.bundle import checkout_fab, checkout_version
from client.launcher import LauncherError, RuntimeAPI, answer
from xr0_core.deploy.appversion import BundleError, bundle_files, fab_version
from xr0_core.site.policy import PolicyRefusal, SitePolicy, save_policy, with_values
from xr0_core.site.refusals import check_bundle

ROOT = Path(__file__).resolve().parents[2]
APP_PACKAGES = ("cli", "client", "server", "simulation", "strategies", "xr0_core")


def _copy_app(dest: Path, packages=APP_PACKAGES) -> Path:
    for pkg in packages:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _marker_code(marker: Path) -> str:
    return f"\nimport pathlib as _p\n_p.Path({str(marker)!r}).write_text('bundle code ran')\n"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """FAB bytes of the approved copy and the two modified bundles, and the markers their code would write."""
    tmp = tmp_path_factory.mktemp("bundles")
    approved = _copy_app(tmp / "approved")

    extra = _copy_app(tmp / "extra-entry")  # (a) approved packages + the coordinator's own entry module
    marker_a = tmp / "marker-extra-entry"
    (extra / "entry_of_the_coordinator.py").write_text(
        _marker_code(marker_a) + "from client.app import app  # the approved app, after our own code ran\n")
    pyproject = (extra / "pyproject.toml").read_text()
    assert 'clientapp = "client.app:app"' in pyproject
    (extra / "pyproject.toml").write_text(pyproject.replace('clientapp = "client.app:app"',
                                                            'clientapp = "entry_of_the_coordinator:app"'))

    client_only = tmp / "client-only"  # (b) only client/, modified; xr0_core would come from the hospital
    _copy_app(client_only, packages=("client",))
    marker_b = tmp / "marker-client-only"
    app_py = client_only / "client" / "app.py"
    future = "from __future__ import annotations\n"
    app_py.write_text(app_py.read_text().replace(future, future + _marker_code(marker_b), 1))

    return {"approved": checkout_fab(approved), "extra-entry": checkout_fab(extra),
            "client-only": checkout_fab(client_only), "markers": {"extra-entry": marker_a, "client-only": marker_b},
            "dirs": {"approved": approved, "extra-entry": extra, "client-only": client_only}}


@pytest.fixture
def identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 11), ("_task_id", 3)):  # what pull_task_input sets
        monkeypatch.setattr(TaskIdentity, name, value)
    yield
    set_verified(None)


def _site(tmp_path: Path, versions: list[str]) -> dict[str, str]:
    state = tmp_path / "state"
    data = tmp_path / "data"
    state.mkdir(mode=0o700)
    data.mkdir()
    save_policy(with_values(SitePolicy(), {"apps.allowed-versions": versions}), state / "policy.toml")
    return {"data-path": str(data), "state-dir": str(state)}


def _task(node_config: dict[str, str], message_type: str = "train") -> tuple[Message, Context]:
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=11,
                  message_type=message_type, group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg, Context(run_id=7, node_id=11, node_config=node_config, state=RecordDict(), run_config={})


class _Installed:
    """Stands for the hospital's installed ClientApp: records that it ran and replies."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        def app(message, context):
            self.calls += 1
            assert verified_version() is not None  # the in-app check sees what the launcher approved
            return Message(RecordDict({"metrics": ConfigRecord({"ok": 1})}), reply_to=message)

        return app


@pytest.mark.parametrize("name", ["extra-entry", "client-only"])
def test_modified_bundles_are_refused_before_their_code_runs(bundles, name, tmp_path, identity):
    approved = fab_version(bundles["approved"])
    node = _site(tmp_path, [approved])
    installed = _Installed()
    msg, ctx = _task(node)
    reply, ran = answer(msg, ctx, bundles[name], installed)
    assert not ran and installed.calls == 0 and reply.has_error()
    version = fab_version(bundles[name])
    assert version != approved
    assert "not approved" in reply.error.reason and version in reply.error.reason, reply.error.reason
    assert not bundles["markers"][name].exists(), "the bundle's code ran"
    audit = [json.loads(line) for line in (Path(node["state-dir"]) / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["message_type"] == "train" and "not approved" in audit[-1]["error"]

    msg, ctx = _task(node, "query.secagg_setup")  # every message type passes the launcher, not only train
    reply, ran = answer(msg, ctx, bundles[name], installed)
    assert not ran and reply.has_error() and installed.calls == 0


def test_the_approved_bundle_runs_the_installed_app(bundles, tmp_path, identity):
    node = _site(tmp_path, [fab_version(bundles["approved"])])
    installed = _Installed()
    msg, ctx = _task(node)
    reply, ran = answer(msg, ctx, bundles["approved"], installed)
    assert ran and installed.calls == 1 and not reply.has_error()
    assert verified_version() == fab_version(bundles["approved"])


def test_flowers_own_loader_runs_the_modified_bundles_code(bundles, tmp_path):
    """Control: what ``flwr-clientapp`` does with the same bytes (unpack under FLWR_HOME, import the mapped
    entry module) runs the coordinator's code, so the marker is a real witness."""
    for name in ("extra-entry", "client-only"):
        fab = tmp_path / f"{name}.fab"
        fab.write_bytes(bundles[name])
        script = textwrap.dedent(f"""
            import hashlib, pathlib, tomllib
            from flwr.cli.install import install_from_fab
            from flwr.clientapp.utils import get_load_client_app_fn
            data = pathlib.Path({str(fab)!r}).read_bytes()
            install_from_fab(data, skip_prompt=True)
            project = tomllib.loads(__import__('zipfile').ZipFile({str(fab)!r}).read('pyproject.toml').decode())
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            try:
                load("xr0/" + project["project"]["name"], project["project"]["version"], hashlib.sha256(data).hexdigest())
            except Exception as exc:  # the app may fail to load after its module-level code ran
                print("load:", type(exc).__name__)
        """)
        home = tmp_path / f"flwr-{name}"
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FLWR_HOME": str(home),
                                   "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}, timeout=300)
        assert bundles["markers"][name].exists(), (name, proc.stdout[-2000:], proc.stderr[-3000:])
        bundles["markers"][name].unlink()


def test_version_covers_every_file_and_the_mapping_not_the_location(bundles, tmp_path):
    approved = fab_version(bundles["approved"])
    assert checkout_version(_copy_app(tmp_path / "elsewhere")) == approved  # same files, another folder
    assert len(approved.rpartition("+")[2]) == 64
    assert len({approved, *(fab_version(bundles[n]) for n in ("extra-entry", "client-only"))}) == 3
    doc = _copy_app(tmp_path / "doc")
    (doc / "NOTES.md").write_text("a doc is part of the bundle too")
    assert checkout_version(doc) != approved
    files = bundle_files(bundles["approved"])
    assert "pyproject.toml" in files and "client/app.py" in files and "xr0_core/config.py" in files


def test_broken_bundles_are_refused_with_a_reason(bundles, tmp_path, identity):
    import io
    import zipfile

    with pytest.raises(BundleError, match="not a readable zip"):
        bundle_files(b"not a zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("pyproject.toml", '[project]\nversion = "0.1.0"\n')
        zf.writestr("client/app.py", "x = 1\n")
        zf.writestr("client/app.py", "x = 2\n")  # two copies: a loader could read the one not hashed
    with pytest.raises(BundleError, match="twice"):
        bundle_files(buf.getvalue())
    node = _site(tmp_path, [fab_version(bundles["approved"])])
    msg, ctx = _task(node)
    reply, ran = answer(msg, ctx, buf.getvalue(), _Installed())
    assert not ran and "cannot be checked" in reply.error.reason


def test_an_allow_list_refuses_a_clientapp_no_launcher_checked():
    """The installed ClientApp's own check: loaded by Flower (no launcher), a policy with an allow-list
    refuses every message and says how to start the SuperNode."""
    policy = with_values(SitePolicy(), {"apps.allowed-versions": ["0.1.0+" + "a" * 64]})
    with pytest.raises(PolicyRefusal, match="--isolation process"):
        check_bundle(policy, None)
    check_bundle(SitePolicy(), None)  # no allow-list: simulation and sites that approve any bundle


def test_runtime_api_off_this_host_needs_tls():
    RuntimeAPI("127.0.0.1:9094")
    RuntimeAPI("localhost:9094")
    with pytest.raises(LauncherError, match="needs TLS"):
        RuntimeAPI("10.1.2.3:9094")
    RuntimeAPI("10.1.2.3:9094", root_certificates=b"-----BEGIN CERTIFICATE-----")
