"""``xr0 site supernode`` and the doctor's admission check (issue 22, rows 7 and 9): a SuperNode that Flower ends
with status 0 because its key was revoked becomes exit 3 with "revoked by the coordinator"; a key the SuperLink
does not admit is refused before the SuperNode starts; the doctor no longer says "ready" for it. The SuperLink's
answer is played by a stub of :func:`client.node_link.admission` (the real one: tests/deploy)."""

from __future__ import annotations

import stat
import sys

import pytest

from client import node_link, supernode_cmd
from cli import main
from xr0_core.deploy.certs import make_site_key


@pytest.fixture
def hospital(tmp_path, monkeypatch):
    """A state folder, a node key, and a stand-in flower-supernode that exits 0 at once (as Flower's does when
    its key is unregistered: "terminated gracefully")."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    make_site_key(state / "keys", "mhh")
    fake = tmp_path / "flower-supernode"
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen({str(tmp_path / 'argv')!r}, 'w').write(' '.join(sys.argv))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(supernode_cmd, "_flower_supernode", lambda: str(fake))
    (tmp_path / "ca.crt").write_text("")
    args = ["site", "supernode", "--state-dir", str(state), "--data", str(tmp_path), "--superlink", "127.0.0.1:1",
            "--root-certificates", str(tmp_path / "ca.crt"), "--key", str(state / "keys" / "mhh"), "--port", "9999",
            "--", "--isolation", "process"]
    return state, args, tmp_path / "argv"


def _answers(monkeypatch, *statuses):
    """The SuperLink's answers to the successive admission checks."""
    answers = iter(statuses)
    monkeypatch.setattr(node_link, "admission", lambda link, node_id=None, remember=None: (next(answers), "detail"))


def test_a_supernode_ended_by_a_revocation_exits_3(hospital, monkeypatch, capsys):
    state, args, argv = hospital
    _answers(monkeypatch, "admitted", "not-admitted")  # admitted at start, revoked when Flower's SuperNode exited
    assert main(args) == 3
    assert "revoked by the coordinator" in capsys.readouterr().err
    ran = argv.read_text()
    assert "--isolation process" in ran and "--port 9999" in ran and f'state-dir="{state.resolve()}"' in ran
    assert node_link.NodeLink.read(state).superlink == "127.0.0.1:1"  # left for the ClientApp's run checks


def test_a_normal_exit_stays_a_normal_exit(hospital, monkeypatch):
    _, args, _ = hospital
    _answers(monkeypatch, "admitted", "admitted")
    assert main(args) == 0


def test_a_key_not_admitted_never_starts_the_supernode(hospital, monkeypatch, capsys):
    _, args, argv = hospital
    _answers(monkeypatch, "not-admitted")
    assert main(args) == 3 and not argv.exists()
    assert "revoked by the coordinator (or never admitted)" in capsys.readouterr().err


def test_doctor_reports_a_key_the_superlink_does_not_admit(hospital, monkeypatch, capsys):
    state, _, _ = hospital
    found = type("Findings", (), {"problems": [], "notes": []})()
    args = type("Args", (), {"key": state / "keys" / "mhh", "superlink": "127.0.0.1:1",
                             "root_certificates": state, "state_dir": state})()
    _answers(monkeypatch, "not-admitted")
    supernode_cmd.doctor_admission(args, found)
    assert len(found.problems) == 1 and "send mhh.pub to the coordinator" in found.problems[0]
    found.problems.clear()
    _answers(monkeypatch, "admitted")
    supernode_cmd.doctor_admission(args, found)
    assert found.problems == [] and found.notes == ["detail"]
