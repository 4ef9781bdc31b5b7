"""Long-term site signing keys (Ed25519) for the malicious-coordinator checks of secure aggregation.

Per-round X25519 keys are fresh every round, so nothing ties them to a hospital. A coordinator that may
deviate could substitute its own keys for a neighbour's (and read the shares) or show different survivor
sets to different sites. Each site therefore signs, with a long-term Ed25519 key that only it holds,

- its round keys (``c``, ``s``) at setup: :func:`key_message`;
- the round view (graph, who shared keys, who uploaded) before it reveals any share: :func:`view_message`
  (the consistency round of Bonawitz et al. 2017, §4 "malicious server").

The guarantee is only as good as the binding of signing keys to hospitals: a site accepts peers' signing
keys only from its *pinned* set (site policy ``secagg.peer-keys``; in simulation the keys of the simulated
hospitals). With no pinned keys a coordinator can invent identities and the checks hold against an
honest-but-curious coordinator only (docs/secure-aggregation.md says so).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .keys import PROTOCOL

SIGNING_KEY_FILE = "secagg-signing.key"  # 32-byte Ed25519 seed, hex, mode 0600; never leaves the site
SIGNING_PUB_FILE = "secagg-signing.pub"  # its public key, hex: what other hospitals pin


def generate_signing_key() -> bytes:
    """A fresh 32-byte Ed25519 private key (OS CSPRNG)."""
    return Ed25519PrivateKey.generate().private_bytes_raw()


def public_of(private: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def sign(private: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is ``public``'s signature of ``message`` (never raises on bad input)."""
    if not isinstance(public, bytes) or len(public) != 32 or not isinstance(signature, bytes):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def load_or_create(state_dir: str | Path) -> bytes:
    """The site's signing key from ``<state_dir>/secagg-signing.key``, created (0600) on first use.

    The public half is written next to it (``secagg-signing.pub``): the hospital sends that hex string to
    the other hospitals, which pin it in their site policy (``secagg.peer-keys``).
    """
    state_dir = Path(state_dir)
    path = state_dir / SIGNING_KEY_FILE
    if path.is_file():
        text = path.read_text().strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(f"{path} does not hold a 32-byte hex Ed25519 key; restore it from backup (other "
                             "hospitals pinned its public key) or delete it to make a new identity")
        return key
    state_dir.mkdir(parents=True, exist_ok=True)
    key = generate_signing_key()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    os.replace(tmp, path)
    (state_dir / SIGNING_PUB_FILE).write_text(public_of(key).hex() + "\n")
    return key


def read_public(state_dir: str | Path) -> bytes | None:
    """The public signing key a state folder publishes, or None when it has none yet."""
    path = Path(state_dir) / SIGNING_PUB_FILE
    if not path.is_file():
        return None
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        return None
    return key if len(key) == 32 else None


def key_message(tag: bytes, node: int, c_public: bytes, s_public: bytes) -> bytes:
    """What a site signs at setup: its two round keys, bound to the round and its node id."""
    return PROTOCOL + b"|keys|" + tag + struct.pack(">Q", node) + c_public + s_public


def graph_digest(graph: dict[int, tuple[int, ...]]) -> bytes:
    """SHA-256 of the neighbour graph's sorted edge list (the same graph at every site, or a mismatch)."""
    h = hashlib.sha256(PROTOCOL + b"|graph|")
    for u in sorted(graph):
        for v in sorted(graph[u]):
            if u < v:
                h.update(struct.pack(">QQ", u, v))
    return h.digest()


def transcript_digest(tag: bytes, params_flat: bytes, graph: bytes, announced: dict[int, tuple[bytes, bytes, bytes]],
                      shared: list[int], uploaded: list[int]) -> bytes:
    """SHA-256 of one session's whole transcript, what every site signs in the consistency round.

    Parameters
    ----------
    tag : bytes
        The session's round tag (run key, round, Flower run id, session id: :func:`keys.round_tag`).
    params_flat : bytes
        The round's public parameters, canonically encoded (threshold, ring, weight cap).
    graph : bytes
        :func:`graph_digest` of the neighbour graph.
    announced : dict node -> (c public, s public, signing public)
        The round keys of every node that announced keys (U1).
    shared, uploaded : list of int
        U2 (nodes that shared keys) and U3 (nodes whose masked upload is in the sum).
    """
    def ids(xs) -> bytes:
        return struct.pack(">I", len(xs)) + b"".join(struct.pack(">Q", x) for x in sorted(xs))

    h = hashlib.sha256(PROTOCOL + b"|transcript|")
    for part in (tag, params_flat, graph):
        h.update(struct.pack(">I", len(part)) + part)
    h.update(ids(list(announced)))
    for u in sorted(announced):
        c, s, sign = announced[u]
        h.update(struct.pack(">Q", u) + c + s + sign)
    h.update(ids(shared) + ids(uploaded))
    return h.digest()


def view_message(transcript: bytes, node: int) -> bytes:
    """What a site signs in the consistency round: the session's :func:`transcript_digest` and its node id."""
    return PROTOCOL + b"|view|" + transcript + struct.pack(">Q", node)
