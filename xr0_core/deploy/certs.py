"""Credentials of a real federation: the coordinator's CA, the SuperLink's TLS certificate, hospital node keys.

Who makes what (docs/deploy-coordinator.md, docs/deploy-hospital.md)::

    coordinator   <dir>/ca.crt, ca.key                 self-signed CA (ca.crt goes to every hospital)
    coordinator   <dir>/superlink.crt, superlink.key   TLS certificate for the SuperLink, signed by the CA,
                                                       valid for exactly the names / IPs hospitals dial
    hospital      <dir>/<site>, <site>.pub             EC P-384 node key pair in OpenSSH form (what
                                                       ``flwr supernode register`` and
                                                       ``flower-supernode --auth-supernode-private-key`` read);
                                                       only the ``.pub`` leaves the hospital

Private keys are created with mode 0600 (``O_EXCL``: never through an existing file). An existing file is
never overwritten silently: without ``replace`` the call raises :class:`CredentialError`; with it the old
file is moved aside to ``<name>.replaced-<UTC time>`` and the move is returned so callers can say so.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SUPERLINK_CERT, SUPERLINK_KEY = "superlink.crt", "superlink.key"
CURVE = ec.SECP384R1()  # a NIST curve: flwr supernode register refuses others


class CredentialError(ValueError):
    """A credential cannot be made or read; the message says which file and what to do."""


@dataclass
class Written:
    """Files written by one call, and files moved aside to make room (``replace=True``)."""

    files: list[Path] = field(default_factory=list)
    replaced: list[tuple[Path, Path]] = field(default_factory=list)  # (old path, where it went)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _make_room(paths: list[Path], replace: bool, written: Written) -> None:
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not replace:
        raise CredentialError(
            f"{', '.join(map(str, existing))} already exist(s); refusing to overwrite. Keep using them, or pass "
            "--replace to move them aside (anything signed by or registered with the old key must then be "
            "re-issued or re-registered)")
    stamp = _now().strftime("%Y%m%dT%H%M%SZ")
    for p in existing:
        aside = p.with_name(f"{p.name}.replaced-{stamp}")
        os.replace(p, aside)
        written.replaced.append((p, aside))


def _write(path: Path, data: bytes, mode: int, written: Written) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # the umask may have narrowed it; never widens a private key
    written.files.append(path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise CredentialError(f"no CA in {out} ({CA_CERT} and {CA_KEY}); create it first with `xr0 certs ca --out {out}`")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialError(f"{key_path} is not an EC private key")
    return cert, key


def make_ca(out: str | Path, name: str = "XR-0 coordinator CA", days: int = 3650, replace: bool = False) -> Written:
    """A self-signed CA (``ca.crt`` public, ``ca.key`` 0600). Hospitals pin ``ca.crt``."""
    out = Path(out)
    written = Written()
    _make_room([out / CA_CERT, out / CA_KEY], replace, written)
    key = ec.generate_private_key(CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    _write(out / CA_KEY, _pem_key(key), 0o600, written)
    _write(out / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644, written)
    return written


def parse_san(value: str) -> x509.GeneralName:
    """``127.0.0.1`` / ``::1`` -> IP address; anything else must be a DNS name (no scheme, no port)."""
    text = value.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text or any(c in text for c in ":/ ") or text.startswith(".") or text.endswith("."):
        raise CredentialError(f"--san {value!r} is neither an IP address nor a DNS name (give e.g. "
                              "coordinator.example.org or 10.0.0.5, without scheme or port)")
    return x509.DNSName(text)


def make_superlink_cert(out: str | Path, sans: list[str], days: int = 825, replace: bool = False) -> Written:
    """The SuperLink's TLS key and certificate, signed by the CA in ``out``, valid for ``sans``.

    Every name or address a hospital (or the coordinator's ``flwr`` CLI) dials must be listed: TLS checks it.
    """
    if not sans:
        raise CredentialError("give at least one --san: the host name or IP address hospitals use to reach the "
                              "SuperLink (and 127.0.0.1 if the coordinator's flwr CLI runs on the same host)")
    names = list(dict.fromkeys(parse_san(s) for s in sans))  # a repeated name once (e.g. host = 127.0.0.1)
    out = Path(out)
    ca_cert, ca_key = _load_ca(out)
    written = Written()
    _make_room([out / SUPERLINK_CERT, out / SUPERLINK_KEY], replace, written)
    key = ec.generate_private_key(CURVE)
    now = _now()
    cn = str(names[0].value)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write(out / SUPERLINK_KEY, _pem_key(key), 0o600, written)
    _write(out / SUPERLINK_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644, written)
    return written


def check_site_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise CredentialError(f"site name {name!r}: use letters, digits, '-', '_' or '.' (it names the key files)")
    return name


def make_site_key(out: str | Path, name: str, replace: bool = False) -> Written:
    """A hospital's node key pair: ``<out>/<name>`` (OpenSSH private key, 0600) and ``<name>.pub``."""
    out = Path(out)
    check_site_name(name)
    written = Written()
    priv, pub = out / name, out / f"{name}.pub"
    _make_room([priv, pub], replace, written)
    key = ec.generate_private_key(CURVE)
    _write(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), 0o600, written)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(pub, line + f" xr0-site-{name}\n".encode(), 0o644, written)
    return written


def check_private_key_file(path: str | Path) -> list[str]:
    """Problems with a hospital's node private key (missing, unreadable, wrong type, readable by others)."""
    path = Path(path)
    if not path.is_file():
        return [f"node key {path} does not exist (make it with `xr0 certs site --out {path.parent} --name {path.name}`)"]
    problems = []
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        problems.append(f"node key {path} has mode {mode:o}: others can read it; run `chmod 600 {path}`")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        return problems + [f"node key {path} is not an unencrypted OpenSSH private key ({exc})"]
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        problems.append(f"node key {path} is not an EC key (Flower needs a NIST EC curve, e.g. P-384)")
    return problems


def check_ca_file(path: str | Path) -> list[str]:
    """Problems with the CA certificate a hospital pins (missing, not PEM, expired)."""
    path = Path(path)
    if not path.is_file():
        return [f"CA certificate {path} does not exist (get ca.crt from the coordinator)"]
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        return [f"CA certificate {path} is not a PEM certificate ({exc})"]
    if cert.not_valid_after_utc < _now():
        return [f"CA certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; ask the coordinator for a new one"]
    return []
