"""``xr0 site doctor``: a hospital's preflight before starting its SuperNode, one line per problem.

Checks, in order: the state folder (exists, writable, not readable by others: it holds the privacy ledger
and the audit log), the site policy (parses; notes when it approves any app version; a problem when it
pins no peer signing keys for secure aggregation and does not acknowledge that), the node key
(OpenSSH EC private key, mode 0600), the coordinator CA (PEM, not expired), the data folder (exists,
readable) and the SuperLink (a TLS handshake that verifies the SuperLink's certificate against the CA and the
host name the SuperNode will dial). Nothing is sent but the TLS handshake.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_state_dir(state_dir: Path, out: Findings) -> bool:
    if not state_dir.exists():
        out.problems.append(f"state-dir {state_dir} does not exist: create it (mkdir -m 700 {state_dir}); keep it "
                            "for every future run (it holds the privacy ledger)")
        return False
    if not state_dir.is_dir():
        out.problems.append(f"state-dir {state_dir} is not a folder")
        return False
    if not os.access(state_dir, os.W_OK | os.X_OK):
        out.problems.append(f"state-dir {state_dir} is not writable by this user (uid {os.getuid()}): the SuperNode "
                            "must run as the user who owns it")
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode & 0o007:
        out.problems.append(f"state-dir {state_dir} has mode {mode:o}: other users can read or write the privacy "
                            f"ledger and audit log; run `chmod o-rwx {state_dir}`")
    return True


def check_policy(state_dir: Path, policy_file: Path | None, out: Findings) -> None:
    from xr0_core.site.policy import PolicyError
    from xr0_core.site.state import site_policy

    try:
        policy = site_policy(state_dir, {"policy": str(policy_file)} if policy_file else {})
    except (PolicyError, OSError, ValueError) as exc:
        out.problems.append(f"site policy: {exc}")
        return
    if not policy.path:
        out.notes.append(f"no site policy file in {state_dir}: defaults are in force (no DP required, any app "
                         "version); set one with `xr0 site policy --state-dir ... --set ...`")
    elif not policy.apps.allowed_versions:
        out.notes.append("site policy approves any app version (apps.allowed-versions is empty); pin the reviewed "
                         "one with `--set apps.allowed-versions=<xr0 site app-version>`")
    else:
        out.notes.append("site policy approves listed app versions: start the SuperNode with --isolation process and "
                         "`xr0 site clientapp` beside it (a ClientApp Flower loads from the coordinator's bundle "
                         "refuses every message)")
    if policy.privacy.run_cap_missing:
        from xr0_core.site.policy import run_cap_advice

        out.problems.append(f"site policy: {run_cap_advice(policy.privacy)}")
    if not policy.secagg.peer_keys:
        if policy.secagg.allow_unpinned:
            out.notes.append("secure aggregation runs without pinned peer keys (secagg.allow-unpinned = true): a "
                             "coordinator that deviates from the protocol is not detected")
        else:
            out.problems.append("site policy pins no peer signing keys (secagg.peer-keys is empty): this site refuses "
                                "every secure-aggregation round. Pin the other hospitals' keys (each prints its own "
                                "with `xr0 site secagg-key --state-dir DIR`) with `--set secagg.peer-keys=KEY,KEY`, "
                                "or acknowledge the risk with `--set secagg.allow-unpinned=true`")


def check_data(data: Path, out: Findings) -> None:
    if not data.is_dir():
        out.problems.append(f"data-path {data} is not a folder")
    elif not os.access(data, os.R_OK | os.X_OK):
        out.problems.append(f"data-path {data} is not readable by this user")


def check_superlink(address: str, ca_file: Path, out: Findings, timeout: float = 5.0) -> None:
    """A TCP connection and a verified TLS handshake to ``address`` (``HOST:PORT``)."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        out.problems.append(f"superlink {address!r} is not HOST:PORT")
        return
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        out.problems.append(f"superlink {address} is not reachable ({exc.strerror or exc}): check the address, "
                            "firewall (outbound TCP to that port) and proxy (docs/deploy-hospital.md)")
        return
    try:
        if not ca_file.is_file():
            return  # reported by the CA check
        ctx = ssl.create_default_context(cafile=str(ca_file))
        with ctx.wrap_socket(sock, server_hostname=host):
            pass
    except ssl.SSLCertVerificationError as exc:
        out.problems.append(f"superlink {address}: its TLS certificate does not verify against {ca_file} for "
                            f"{host!r} ({exc.verify_message}); ask the coordinator for the right ca.crt, or use "
                            "the host name the certificate names")
    except (ssl.SSLError, OSError) as exc:
        out.problems.append(f"superlink {address}: TLS handshake failed ({exc}); is it started with its "
                            "--ssl-* flags (not --insecure)?")
    finally:
        sock.close()


def doctor(state_dir: Path, key: Path | None, ca_file: Path | None, superlink: str | None,
           data: Path | None = None, policy_file: Path | None = None) -> Findings:
    """Every check whose inputs are given; see the module docstring."""
    from xr0_core.deploy.certs import check_ca_file, check_private_key_file

    out = Findings()
    if check_state_dir(state_dir, out):
        check_policy(state_dir, policy_file, out)
    if key is not None:
        out.problems += check_private_key_file(key)
    if ca_file is not None:
        out.problems += check_ca_file(ca_file)
    if data is not None:
        check_data(data, out)
    if superlink:
        if ca_file is None:
            out.problems.append("--superlink needs --root-certificates (the coordinator's ca.crt) to verify it")
        else:
            check_superlink(superlink, ca_file, out)
    return out
