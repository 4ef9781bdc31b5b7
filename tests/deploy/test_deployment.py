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
    # Written on purpose by the browser tests of tests/dashboard, which run beside this module (two workers).
    others = ("tests/dashboard/screenshots/",)
    tracked = set(subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split())
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for f in filenames:
            if f in skip:  # a worktree's .git is a file
                continue
            p = Path(dirpath) / f
            try:
                rel = p.relative_to(root).as_posix()
                if rel.startswith(others):
                    continue
                if rel not in tracked and p.stat().st_mtime > since:
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
    # xr0 site supernode asks the SuperLink before starting Flower's SuperNode: not admitted, exit 3 at once.
    assert finished_run["intruder_rc"] == 3, deployment.procs.log("site_c")[-3000:]
    assert "revoked by the coordinator (or never admitted)" in deployment.procs.log("site_c")
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
    assert sorted(s["name"] for s in train[0]["sites"]) == list(SITES)  # the names they were admitted under
    assert train[0]["metrics"]["secagg-uploads"] == 2
    sites = d.ok(COORD["sites"], d.coord_env).stdout
    assert all(name in sites for name in SITES) and "SHA256:" in sites, sites
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


def _write_run(d, **over) -> Path:
    out = over.pop("out")
    run_config = {**RUN_CONFIG, "federation.out-dir": str(out), **over}
    (d.tmp / "srv" / "run.toml").write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in run_config.items()))
    return out


def _audit(env: dict[str, str], run_id: str | None = None) -> list[dict]:
    path = Path(env["XR0_STATE"]) / "audit.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [a for a in lines if run_id is None or str(a.get("run_id")) == str(run_id)]


def _counted(env: dict[str, str], run_key: str) -> list[tuple[int, str]]:
    return [(r.round, r.status) for r in PrivacyLedger(env["XR0_STATE"]).read().releases
            if r.run_id == run_key and r.counts]


def _wait(condition, seconds: float, why) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why()
        threading.Event().wait(0.2)  # polling files and processes, not a timing assumption


def test_a_round_that_cannot_reach_its_threshold_is_refused_at_the_first_message(finished_run, deployment):
    """DP + SecAgg, two hospitals, site_b's budget is spent: it says so at the preflight, before any key exchange;
    a secure round needs two, so the round is skipped before anyone trains, nobody is charged, the run fails."""
    d = deployment
    envs = finished_run["envs"]
    for name in SITES:  # the runbook's policy again: DP + secure aggregation required, the approved version
        d.ok(SITE["policy"], envs[name])
    d.ok('xr0 site policy --state-dir "$XR0_STATE" --set privacy.budget=0.5', envs["site_b"])  # below its spend
    before = {name: PrivacyLedger(envs[name]["XR0_STATE"]).read().releases for name in SITES}
    out = _write_run(d, out=d.tmp / "out-preflight")
    d.ok(COORD["run"], d.coord_env)
    run_id = (d.tmp / "srv" / "last-run-id").read_text().strip()
    st = d.sh(COORD["status"], d.coord_env, timeout=600)
    assert st.returncode == 1 and "finished:failed" in st.stdout, f"{st.stdout}\n{st.stderr}\n{_diagnose(d)}"
    train = [r for r in json.loads((out / "metrics.json").read_text())["rounds"] if r["kind"] == "train"]
    assert len(train) == 1 and not train[0]["updated"] and "preflight: 1 of 2 hospitals" in train[0]["reason"]
    by = {s["name"]: s for s in train[0]["sites"]}
    assert by["site_b"]["status"] == "failed" and by["site_b"]["reason"].startswith("preflight: privacy ledger")
    assert by["site_a"]["status"] == "skipped", by
    for name in SITES:
        assert PrivacyLedger(envs[name]["XR0_STATE"]).read().releases == before[name], name  # no epsilon anywhere
        assert {a["message_type"] for a in _audit(envs[name], run_id)} == {"query.preflight"}, name


def test_a_run_stopped_mid_round_under_dp_and_secagg_resumes_and_charges_each_round_once(finished_run, deployment):
    """A 2-round DP + SecAgg run is stopped (runbook's stop step) as round 2's training starts; the hospitals
    send nothing for it and charge nothing that did not leave; the resumed run (runbook's resume step) finishes,
    and each ledger holds exactly the releases that left: round 1 and round 2 of this run, once each, within the
    run cap."""
    d = deployment
    envs = finished_run["envs"]
    for name in SITES:
        d.ok(SITE["policy"], envs[name])  # site_b's budget back to the runbook's 8
    out = _write_run(d, out=d.tmp / "out-stop", **{"federation.rounds": 2, "train.local-steps": 8})
    d.ok(COORD["run"], d.coord_env)
    run_id = (d.tmp / "srv" / "last-run-id").read_text().strip()
    shared_keys = lambda: min(sum(a["message_type"] == "query.secagg_share_keys" for a in _audit(envs[n], run_id))
                              for n in SITES)
    _wait(lambda: shared_keys() >= 2, 600, lambda: _diagnose(d))  # round 2's keys are shared: training is next
    d.ok(COORD["stop"], d.coord_env)
    st = d.sh(COORD["status"], d.coord_env, timeout=600)
    assert st.returncode == 1 and "finished:stopped" in st.stdout, f"{st.stdout}\n{st.stderr}"
    assert (out / "checkpoints" / "round-0001").is_dir() and not (out / "checkpoints" / "round-0002").exists()
    run_key = json.loads((out / "metrics.json").read_text())["run_key"]
    for name in SITES:  # round 2 left nowhere, so it counts nowhere
        assert _counted(envs[name], run_key) == [(1, "committed")], (name, _diagnose(d))

    d.ok(COORD["resume"], d.coord_env)
    st = d.sh(COORD["status"], d.coord_env, timeout=600)
    assert st.returncode == 0 and "finished:completed" in st.stdout, f"{st.stdout}\n{st.stderr}\n{_diagnose(d)}"
    train = [r for r in json.loads((out / "metrics.json").read_text())["rounds"] if r["kind"] == "train"]
    assert [r["round"] for r in train] == [1, 2] and all(r["updated"] for r in train), train
    for name in SITES:
        assert _counted(envs[name], run_key) == [(1, "committed"), (2, "committed")], name
        run_eps = PrivacyLedger(envs[name]["XR0_STATE"]).epsilon(delta=1e-5, run_id=run_key)
        assert 0 < run_eps <= 4.0 * (1 + 1e-9), (name, run_eps)  # the runbook's run cap, both runs together
        reported = next(s for s in train[-1]["sites"] if s["name"] == name)["metrics"]
        assert reported["privacy-run-cap"] == 4.0 and reported["epsilon-run"] >= run_eps  # rounded up, never less


def _task_pids(log: str) -> list[int]:
    return [int(line.rsplit("(pid ", 1)[1].rstrip(")\n ")) for line in log.splitlines()
            if "started the hospital's ClientApp (pid " in line]


def test_a_new_hospital_joins_and_an_evaluation_past_its_timeout_is_a_drop(finished_run, deployment):
    """site_c (never admitted so far) sends its key; the coordinator's same admit loop admits it (the others are
    "already admitted") and it trains in the next run. That run's evaluation at site_b trains its segmentation head
    far longer than the round timeout (the others' policies do not evaluate): the coordinator lists site_b as
    dropped for the evaluation, with why, and the run completes."""
    d = deployment
    envs = finished_run["envs"]
    pub = Path(envs["site_c"]["XR0_STATE"]) / "keys" / "site_c.pub"
    (d.tmp / "nodes" / pub.name).write_bytes(pub.read_bytes())
    admitted = d.ok(COORD["register"], d.coord_env).stderr
    assert "admitted site_c" in admitted and admitted.count("already admitted") == 2, admitted
    for name in (*SITES, "site_c"):  # a plain round: every hospital's policy allows one; only site_b evaluates
        d.ok('xr0 site policy --state-dir "$XR0_STATE" --set privacy.required=false --set secagg.required=false '
             f'--set evaluation.enabled={"true" if name == "site_b" else "false"} '
             '--set apps.allowed-versions="$(xr0 site app-version --app "$XR0_APP")"', envs[name])
    node_c = d.procs.start("site_c-joined", SITE["supernode"], envs["site_c"])
    launcher_c = d.procs.start("site_c-clientapp", SITE["clientapp"], envs["site_c"])
    timeout = 180.0  # ample for a plain round of three; the evaluation below never ends by itself
    out = _write_run(d, out=d.tmp / "out-join", **{
        "secagg.enabled": False, "privacy.enabled": False, "federation.round-timeout": timeout,
        "eval.tasks": "segmentation", "eval.head-steps": 10_000_000})
    seen = len(_task_pids(d.procs.log("site_b-clientapp")))
    d.ok(COORD["run"], d.coord_env)
    st = d.sh(COORD["status"], d.coord_env, timeout=900)
    started = set(_task_pids(d.procs.log("site_b-clientapp"))[seen:])
    for pid in started & tagged_pids(d.procs.tag):  # the evaluation still trains its head: end it (ours only)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert st.returncode == 0 and "finished:completed" in st.stdout, f"{st.stdout}\n{st.stderr}\n{_diagnose(d)}"
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    train = next(r for r in rounds if r["kind"] == "train")
    assert sorted((s["name"], s["status"]) for s in train["sites"]) == [
        ("site_a", "ok"), ("site_b", "ok"), ("site_c", "ok")], train["sites"]
    evaluation = next(r for r in rounds if r["kind"] == "evaluate")
    by = {s["name"]: s for s in evaluation["sites"]}
    assert by["site_b"]["status"] == "dropped", by
    assert by["site_b"]["reason"] == f"evaluate: no reply within federation.round-timeout ({timeout:g} s)"
    assert by["site_a"]["status"] == "failed" and "evaluation.enabled = false" in by["site_a"]["reason"]
    for proc in (node_c, launcher_c):  # site_c leaves again (the next tests count two hospitals)
        d.procs.kill_group(proc)
        proc.wait(timeout=30)

    def c_online() -> bool:
        listed = json.loads(d.ok('xr0 coordinator sites xr0 --json', d.coord_env).stdout)["sites"]
        return any(s["name"] == "site_c" and s["status"] == "online" for s in listed)

    # The SuperLink lists a killed SuperNode as online until two heartbeat intervals (2 x 30 s) pass without one;
    # a run started before that samples site_c and records it as a third, failed site ("Node Unavailable").
    _wait(lambda: not c_online(), 180, lambda: "site_c still listed online 180 s after its SuperNode was killed")


def test_a_revoked_hospital_is_told_so_and_rejoins_with_a_new_key(finished_run, deployment):
    """The coordinator revokes site_b (runbook's revoke step): its xr0 site supernode exits 3, "revoked by the
    coordinator". site_b makes a new key (rekey step), the coordinator's admit loop admits it under the same name
    with a new node id, and its SuperNode connects again (the next test trains with it)."""
    d = deployment
    envs = finished_run["envs"]
    old = json.loads(d.ok('xr0 coordinator sites xr0 --json', d.coord_env).stdout)["sites"]
    old_id = next(s["node_id"] for s in old if s["name"] == "site_b")
    node_b = next(p for n, p in d.procs.started if n == "site_b")
    d.ok(COORD["revoke"], {**d.coord_env, "XR0_REVOKE": "site_b"})
    assert node_b.wait(timeout=180) == 3, d.procs.log("site_b")[-3000:]
    assert "revoked by the coordinator" in d.procs.log("site_b")
    assert "site_b" not in d.ok(COORD["sites"], d.coord_env).stdout
    doctor = d.sh(SITE["doctor"], envs["site_b"])  # the preflight says so too (it used to say "ready")
    assert doctor.returncode == 1 and "revoked by the coordinator" in doctor.stdout, doctor.stdout

    d.ok(SITE["rekey"], envs["site_b"])
    pub = Path(envs["site_b"]["XR0_STATE"]) / "keys" / "site_b.pub"
    (d.tmp / "nodes" / pub.name).write_bytes(pub.read_bytes())
    d.ok(COORD["register"], d.coord_env)
    node = d.procs.start("site_b-readmitted", SITE["supernode"], envs["site_b"])

    def online() -> bool:
        listed = json.loads(d.ok('xr0 coordinator sites xr0 --json', d.coord_env).stdout)["sites"]
        return any(s["name"] == "site_b" and s["status"] == "online" for s in listed)

    _wait(online, 120, lambda: d.procs.log("site_b-readmitted")[-3000:])
    assert node.poll() is None
    assert "site doctor: ready" in d.ok(SITE["doctor"], envs["site_b"]).stdout
    new = json.loads(d.ok('xr0 coordinator sites xr0 --json', d.coord_env).stdout)["sites"]
    assert next(s["node_id"] for s in new if s["name"] == "site_b") != old_id


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
    node_b = [p for n, p in d.procs.started if n in ("site_b", "site_b-readmitted")][-1]  # re-admitted above
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
