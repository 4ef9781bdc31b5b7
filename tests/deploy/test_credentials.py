"""`xr0 certs` and `xr0 site doctor` without any Flower process: modes, no silent overwrite, SANs, keys in
the form `flwr supernode register` reads, the doctor's one line per problem."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509

from xr0_core.deploy.certs import CredentialError, make_ca, make_site_key, make_superlink_cert
from xr0_core.deploy.doctor import doctor

ROOT = Path(__file__).resolve().parents[2]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_ca_superlink_and_site_key(tmp_path):
    make_ca(tmp_path)
    w = make_superlink_cert(tmp_path, ["coordinator.example.org", "127.0.0.1", "127.0.0.1"])
    assert _mode(tmp_path / "ca.key") == 0o600 and _mode(tmp_path / "superlink.key") == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.example.org"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert set(w.files) == {tmp_path / "superlink.key", tmp_path / "superlink.crt"}

    make_site_key(tmp_path / "keys", "site_a")
    assert _mode(tmp_path / "keys" / "site_a") == 0o600
    from flwr.cli.supernode.register import try_load_public_key  # what `flwr supernode register` runs

    assert try_load_public_key(tmp_path / "keys" / "site_a.pub")


def test_never_overwrites_silently(tmp_path):
    make_ca(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(CredentialError, match="refusing to overwrite"):
        make_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == before
    w = make_ca(tmp_path, replace=True)
    moved = dict(w.replaced)
    assert moved[tmp_path / "ca.key"].read_bytes() == before  # the old key is kept aside, not lost
    assert (tmp_path / "ca.key").read_bytes() != before


def test_bad_inputs_say_what_to_fix(tmp_path):
    with pytest.raises(CredentialError, match="create it first"):
        make_superlink_cert(tmp_path, ["127.0.0.1"])
    make_ca(tmp_path)
    with pytest.raises(CredentialError, match="neither an IP address nor a DNS name"):
        make_superlink_cert(tmp_path, ["https://coordinator:8000"])
    with pytest.raises(CredentialError, match="site name"):
        make_site_key(tmp_path, "../evil")


@pytest.mark.slow  # the xr0 command in a subprocess
def test_cli_refuses_second_ca(tmp_path):
    cmd = [sys.executable, "-m", "cli", "certs", "ca", "--out", str(tmp_path)]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).returncode == 0
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


@pytest.fixture
def tls_server(tmp_path):
    """A TLS listener on loopback with the SuperLink certificate (stands in for the SuperLink's port)."""
    make_ca(tmp_path / "certs")
    make_superlink_cert(tmp_path / "certs", ["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "certs" / "superlink.crt", tmp_path / "certs" / "superlink.key")
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}", tmp_path / "certs" / "ca.crt"
    stop.set()
    t.join()
    srv.close()


def test_doctor_ready_then_one_line_per_problem(tmp_path, tls_server):
    address, ca = tls_server
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    make_site_key(state / "keys", "a")
    data = tmp_path / "data"
    data.mkdir()
    unpinned = doctor(state, state / "keys" / "a", ca, address, data)
    assert [p for p in unpinned.problems if "secagg.peer-keys" in p] == unpinned.problems != []
    (state / "policy.toml").write_text(f'[secagg]\npeer-keys = ["{"ab" * 32}"]\n')  # the runbook pins the peers
    ok = doctor(state, state / "keys" / "a", ca, address, data)
    assert ok.problems == [], ok.problems

    state.chmod(0o755)
    (state / "keys" / "a").chmod(0o644)
    (state / "policy.toml").write_text("[privacy]\nbudget = -1\n")
    other_ca = tmp_path / "other"
    make_ca(other_ca)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
    bad = doctor(state, state / "keys" / "a", other_ca / "ca.crt", address, tmp_path / "nowhere")
    text = "\n".join(bad.problems)
    assert "mode 755" in text and "chmod o-rwx" in text
    assert "privacy.budget" in text
    assert "others can read it" in text
    assert "does not verify" in text
    assert "is not a folder" in text
    assert len(bad.problems) == 5, bad.problems
    unreachable = doctor(state, None, ca, dead)
    assert any("not reachable" in p for p in unreachable.problems)
