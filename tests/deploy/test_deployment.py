"""A real deployment on loopback, driven by the runbooks' own commands (docs/deploy-*.md).

One real ``flower-superlink`` (TLS, SuperNode authentication, database, runtime dependency installation
off), two real ``flower-supernode`` hospitals with synthetic data in process isolation, each answered by its
own launcher (``xr0 site clientapp``: the hospital's installed ClientApp, after checking the bundle), one DP +
secure-aggregation round submitted with ``flwr run``, a third SuperNode whose key was never registered, and
a second run with a bundle one hospital did not approve (refused there, trained by the other). Every command is read from the
runbooks (:mod:`xr0_core.deploy.runbook`) and run with the runbook's variables pointed into a temporary
folder; HOME, FLWR_HOME and the caches point there too, so the run writes nothing outside it. Every process
(including ``flwr-serverapp`` children and the launchers' task processes) is killed at the end, pass or fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.deploy.procs import TAG, Procs, tagged_pids
from xr0_core.deploy.runbook import steps
from xr0_core.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.slow  # a real SuperLink with TLS and two real SuperNodes

ROOT = Path(__file__).resolve().parents[2]
COORD = steps(ROOT / "docs" / "deploy-coordinator.md")
SITE = steps(ROOT / "docs" / "deploy-hospital.md")
SITES = ("site_a", "site_b")

# One DP + secure-aggregation round small enough for 2 loaded cores.
RUN_CONFIG = {
    "preset": "cpu-tiny", "federation.rounds": 1, "privacy.enabled": True, "secagg.enabled": True,
    "train.local-steps": 1, "train.batch-size": 4, "ssl.n-local-crops": 2, "model.head-out-dim": 256,
    "model.ibot-out-dim": 256, "model.head-hidden-dim": 64, "eval.tasks": "probe", "eval.max-images": 8,
    "federation.round-timeout": 240.0, "secagg.stage-timeout": 120.0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, seconds: float, log) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before listening:\n{log()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            threading.Event().wait(0.3)  # polling for the port, not a timing assumption
    pytest.fail(f"nothing listens on {port} after {seconds} s:\n{log()[-3000:]}")


def _toml_value(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else repr(v))


def _files_newer_than(root: Path, since: float) -> list[str]:
    """Untracked or ignored files under the checkout modified after ``since`` (the environment, git and caches
    of this pytest process excluded; tracked files are git status's job): such a file was written by the
    deployment outside its temporary folder (an out-dir, a ``.flwr`` folder, a uv environment...)."""
    skip = {".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis"}
    tracked = set(subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split())
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for f in filenames:
            if f in skip:  # a worktree's .git is a file
                continue
            p = Path(dirpath) / f
            try:
                if str(p.relative_to(root)) not in tracked and p.stat().st_mtime > since:
                    found.append(str(p.relative_to(root)))
            except OSError:
                pass
    return found


def _git_state() -> tuple[str, int]:
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    diff = subprocess.run(["git", "diff", "--quiet", "pyproject.toml"], cwd=ROOT).returncode
    return status, diff


class Deployment:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        bindir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith(("FLWR_", "XR0_"))}
        env.update({
            TAG: uuid.uuid4().hex, "PATH": f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(tmp / "home"), "XDG_CACHE_HOME": str(tmp / "cache"), "UV_CACHE_DIR": str(tmp / "cache" / "uv"),
            "PYTHONDONTWRITEBYTECODE": "1", "FLWR_DISABLE_UPDATE_CHECK": "1", "TMPDIR": str(tmp / "tmp"),
            "XR0_APP": str(ROOT),
        })
        for d in ("home", "cache", "tmp", "logs", "srv", "certs", "nodes"):
            (tmp / d).mkdir()
        self.port = _free_port()
        self.coord_env = {**env, "FLWR_HOME": str(tmp / "flwr-coordinator"), "XR0_CERTS": str(tmp / "certs"),
                          "XR0_SRV": str(tmp / "srv"), "XR0_PUBLIC_HOST": "localhost", "XR0_LISTEN": "127.0.0.1",
                          "XR0_PORT": str(self.port), "XR0_KEYS": str(tmp / "nodes")}
        self.procs = Procs(env, tmp / "logs")
        self.base_env = env

    def site_env(self, name: str) -> dict[str, str]:
        state = self.tmp / "sites" / name
        return {**self.base_env, "FLWR_HOME": str(state / "flwr"), "XR0_SITE": name,
                "XR0_DATA": str(self.tmp / "hospitals" / name), "XR0_STATE": str(state),
                "XR0_CA": str(self.tmp / "certs" / "ca.crt"), "XR0_SUPERLINK": f"127.0.0.1:{self.port}",
                "XR0_NODE_PORT": str(_free_port())}

    def sh(self, command: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", command], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp / "logs")

    def ok(self, command: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
        proc = self.sh(command, env, timeout)
        assert proc.returncode == 0, f"{command}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    git_before = _git_state()
    started = time.time()
    dep = Deployment(tmp)
    dep.git_before, dep.started = git_before, started
    try:
        yield dep
    finally:
        strays = dep.procs.kill_all()
        if strays:  # they had left their process group (e.g. a flwr-clientapp that outlived its SuperNode)
            print(f"[deploy test] killed {len(strays)} process(es) outside the started groups", file=sys.stderr)
        left = tagged_pids(dep.procs.tag)
        assert not left, f"processes of the deployment still alive after the kill: {sorted(left)}"


@pytest.fixture(scope="module")
def finished_run(deployment):
    """The whole runbook, coordinator and hospitals interleaved as in real life; returns what each step gave."""
    d = deployment
    from xr0_core.data.synthetic import write_federation

    # Synthetic hospitals (xr0 synth's generator), one folder per site; site_c is the unregistered one.
    write_federation(d.tmp / "hospitals-src", 3, 12, seed=0, image_size=64)
    (d.tmp / "hospitals").mkdir()
    for name, src in zip(SITES + ("site_c",), sorted(p for p in (d.tmp / "hospitals-src").iterdir() if p.is_dir())):
        (d.tmp / "hospitals" / name).symlink_to(src, target_is_directory=True)

    d.ok(COORD["certs-ca"], d.coord_env)
    d.ok(COORD["certs-superlink"], d.coord_env)
    envs = {name: d.site_env(name) for name in SITES + ("site_c",)}
    for name, env in envs.items():
        Path(env["XR0_STATE"]).mkdir(parents=True, mode=0o700)
        d.ok(SITE["site-key"], env)
        d.ok(SITE["runtime-secret"], env)
        if name != "site_c":  # site_c never sends its key
            pub = Path(env["XR0_STATE"]) / "keys" / f"{name}.pub"
            (d.tmp / "nodes" / pub.name).write_bytes(pub.read_bytes())

    superlink = d.procs.start("superlink", COORD["superlink"], d.coord_env)
    _wait_port(d.port, superlink, 90, lambda: d.procs.log("superlink"))
    d.ok(COORD["connect"], d.coord_env)
    d.ok(COORD["register"], d.coord_env)

    result = {"doctor": {}}
    keys = {name: d.ok(SITE["secagg-key"], envs[name]).stdout.strip() for name in SITES}
    for name in SITES:  # each hospital pins the others' signing keys (received out of band)
        envs[name]["XR0_PEER_KEYS"] = ",".join(keys[other] for other in SITES if other != name)
        d.ok(SITE["policy"], envs[name])
        result["doctor"][name] = d.sh(SITE["doctor"], envs[name])
    nodes = {name: d.procs.start(name, SITE["supernode"], envs[name]) for name in SITES}
    launchers = {name: d.procs.start(f"{name}-clientapp", SITE["clientapp"], envs[name]) for name in SITES}
    intruder = d.procs.start("site_c", SITE["supernode"], envs["site_c"])
    try:
        result["intruder_rc"] = intruder.wait(timeout=120)
    except subprocess.TimeoutExpired:
        result["intruder_rc"] = None

    run_config = {**RUN_CONFIG, "federation.out-dir": str(d.tmp / "out")}
    (d.tmp / "srv" / "run.toml").write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in run_config.items()))
    d.ok(COORD["run"], d.coord_env)
    result["status"] = d.sh(COORD["status"], d.coord_env, timeout=600)
    result["nodes_alive"] = {name: p.poll() is None for name, p in {**nodes, **{
        f"{n}-clientapp": p for n, p in launchers.items()}}.items()}
    result["envs"] = envs
    return result


def _diagnose(d) -> str:
    names = ("superlink", *SITES, *(f"{n}-clientapp" for n in SITES))
    return "\n".join(f"--- {n}\n{d.procs.log(n)[-2500:]}" for n in names if (d.tmp / "logs" / f"{n}.log").exists())


def test_doctor_passes_for_a_ready_site(finished_run):
    for name, proc in finished_run["doctor"].items():
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
        assert "site doctor: ready" in proc.stdout


def test_unregistered_node_is_refused(finished_run, deployment):
    assert finished_run["intruder_rc"] not in (None, 0), deployment.procs.log("site_c")[-3000:]
    assert "No SuperNode found with the given public key" in deployment.procs.log("superlink")  # refused by auth
    assert all(finished_run["nodes_alive"].values()), _diagnose(deployment)


def test_dp_secagg_round_completes(finished_run, deployment):
    d = deployment
    st = finished_run["status"]
    assert st.returncode == 0, f"{st.stdout}\n{st.stderr}\n{_diagnose(d)}"
    assert "finished:completed" in st.stdout
    out = d.tmp / "out"
    assert (out / "checkpoints" / "round-0001").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())
    train = [r for r in metrics["rounds"] if r["kind"] == "train"]
    assert len(train) == 1 and train[0]["updated"], train
    assert [s["status"] for s in train[0]["sites"]] == ["ok", "ok"], train[0]["sites"]
    assert train[0]["metrics"]["secagg-uploads"] == 2
    assert (out / "report.html").is_file()
    for name in SITES:  # every message was answered by the hospital's own launcher, none by flwr-clientapp
        assert "started the hospital's ClientApp" in d.procs.log(f"{name}-clientapp"), _diagnose(d)
        assert "Start `flwr-clientapp` process" not in d.procs.log(name)
    for name in SITES:
        state = Path(finished_run["envs"][name]["XR0_STATE"])
        audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
        assert audit, name
        by_type = {a["message_type"]: a for a in audit}
        assert by_type["train.secagg"]["error"] is None and by_type["train.secagg"]["records"], (name, audit)
        # The run spends the whole budget in its one round; evaluation afterwards is the policy's call
        # (evaluation.after-budget-spent = false by default), so it is refused with that reason.
        assert all(a["error"] is None for a in audit if a["message_type"] != "evaluate"), (name, audit)
        if by_type.get("evaluate", {}).get("error"):
            assert "privacy budget is spent" in by_type["evaluate"]["error"]
        ledger = PrivacyLedger(state)
        releases = ledger.read().releases
        assert releases and all(r.status == "committed" for r in releases), (name, releases)
        assert 0 < ledger.epsilon(delta=1e-5) <= 8.0


def test_nothing_written_outside_tmp(finished_run, deployment):
    status, pyproject_changed = _git_state()
    assert pyproject_changed == 0, "pyproject.toml was rewritten"
    assert status == deployment.git_before[0], "the run changed the working tree"
    assert _files_newer_than(ROOT, deployment.started) == []


def _unapproved_bundle(tmp: Path) -> tuple[Path, Path]:
    """A checkout the coordinator changed: the approved bundle's files plus an entry module of its own (which
    writes a marker file when imported), with the ClientApp mapping pointed at it. Returns (folder, marker)."""
    import zipfile

    from client.bundle import checkout_fab

    app = tmp / "unapproved" / "xr0-federated"
    with zipfile.ZipFile(__import__("io").BytesIO(checkout_fab(ROOT))) as zf:
        zf.extractall(app)
    marker = tmp / "unapproved" / "bundle-code-ran"
    (app / "entry_of_the_coordinator.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from client.app import app as _approved\napp = _approved  # flwr run finds `app` by reading the file\n")
    pyproject = (app / "pyproject.toml").read_text()
    assert 'clientapp = "client.app:app"' in pyproject
    (app / "pyproject.toml").write_text(pyproject.replace('clientapp = "client.app:app"',
                                                          'clientapp = "entry_of_the_coordinator:app"'))
    return app, marker


def test_a_bundle_one_hospital_did_not_approve_is_refused_there_while_the_other_trains(finished_run, deployment):
    """The coordinator submits a modified bundle. site_a reviewed and approved it, site_b approves only the
    original: site_b's launcher refuses every message with the bundle's version, site_a trains with its own
    installed ClientApp (the bundle's entry module never runs anywhere), the run completes and exports a model.
    Plain aggregation without DP (a federation of two cannot mask with one hospital)."""
    d = deployment
    envs = finished_run["envs"]
    app, marker = _unapproved_bundle(d.tmp)
    approve = {"site_a": '"$(xr0 site app-version --app "$XR0_APP")","$(xr0 site app-version --app "$XR0_NEW_APP")"',
               "site_b": '"$(xr0 site app-version --app "$XR0_APP")"'}
    for name in SITES:
        d.ok('xr0 site policy --state-dir "$XR0_STATE" --set privacy.required=false --set secagg.required=false '
             f'--set apps.allowed-versions={approve[name]}', {**envs[name], "XR0_NEW_APP": str(app)}, timeout=300)
    new_version = d.ok(f'xr0 site app-version --app "{app}"', envs["site_b"]).stdout.strip()
    out = d.tmp / "out-unapproved"
    run_config = {**RUN_CONFIG, "secagg.enabled": False, "privacy.enabled": False, "federation.out-dir": str(out)}
    (d.tmp / "srv" / "run.toml").write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in run_config.items()))
    d.ok(COORD["run"], {**d.coord_env, "XR0_APP": str(app)})
    st = d.sh(COORD["status"], d.coord_env, timeout=600)
    assert st.returncode == 0 and "finished:completed" in st.stdout, f"{st.stdout}\n{st.stderr}\n{_diagnose(d)}"
    train = [r for r in json.loads((out / "metrics.json").read_text())["rounds"] if r["kind"] == "train"]
    assert len(train) == 1 and train[0]["updated"], train
    sites = train[0]["sites"]
    assert sorted(s["status"] for s in sites) == ["failed", "ok"], sites
    refused = next(s for s in sites if s["status"] == "failed")["reason"]
    assert "not approved" in refused and new_version in refused, refused
    assert (out / "checkpoints" / "round-0001").is_dir() and (out / "backbone.safetensors").is_file()
    assert "not approved" in (out / "report.html").read_text()
    assert "not approved" in d.procs.log("site_b-clientapp")
    assert not marker.exists(), "the coordinator's entry module ran"
    audit_b = (Path(envs["site_b"]["XR0_STATE"]) / "audit.jsonl").read_text().splitlines()
    assert any("not approved" in (json.loads(line)["error"] or "") for line in audit_b)


def test_supernode_killed_mid_round(finished_run, deployment):
    """Plain aggregation: site_b's SuperNode and its launcher (with the task process training) are killed while it
    trains; the round completes with site_a, the coordinator records site_b as missing, and nothing of site_b is
    left running."""
    d = deployment
    envs = finished_run["envs"]
    for name in SITES:  # both sites now accept a plain, non-DP round of the approved version
        d.ok('xr0 site policy --state-dir "$XR0_STATE" --set privacy.required=false --set secagg.required=false '
             '--set apps.allowed-versions="$(xr0 site app-version --app "$XR0_APP")"', envs[name])
    out = d.tmp / "out-kill"
    run_config = {**RUN_CONFIG, "secagg.enabled": False, "privacy.enabled": False, "federation.out-dir": str(out),
                  "federation.round-timeout": 300.0}
    (d.tmp / "srv" / "run.toml").write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in run_config.items()))
    node_b = next(p for n, p in d.procs.started if n == "site_b")
    launcher_b = next(p for n, p in d.procs.started if n == "site_b-clientapp")
    started = "started the hospital's ClientApp"
    seen = d.procs.log("site_b-clientapp").count(started)
    d.ok(COORD["run"], d.coord_env)
    deadline = time.monotonic() + 300
    while d.procs.log("site_b-clientapp").count(started) == seen:  # site_b is training now
        assert time.monotonic() < deadline and node_b.poll() is None, _diagnose(d)
        threading.Event().wait(0.2)  # polling the log, not a timing assumption
    for proc in (node_b, launcher_b):
        d.procs.kill_group(proc)
        proc.wait(timeout=30)
    flwr_home_b = f"FLWR_HOME={envs['site_b']['FLWR_HOME']}".encode()
    left = [pid for pid in tagged_pids(d.procs.tag)
            if flwr_home_b in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")]
    assert not left, f"site_b processes survived the SuperNode's kill: {left}"

    st = d.sh(COORD["status"], d.coord_env, timeout=600)
    assert st.returncode == 0 and "finished:completed" in st.stdout, f"{st.stdout}\n{st.stderr}\n{_diagnose(d)}"
    train = [r for r in json.loads((out / "metrics.json").read_text())["rounds"] if r["kind"] == "train"]
    assert len(train) == 1 and train[0]["updated"], train
    statuses = sorted(s["status"] for s in train[0]["sites"])
    assert statuses.count("ok") == 1 and len(statuses) == 2, train[0]["sites"]
    assert (out / "checkpoints" / "round-0001").is_dir()
