"""Key agreement, key derivation and authenticated share transport.

Per round every client draws two fresh X25519 key pairs: ``c`` (channel: encrypts the Shamir shares it
sends to neighbours) and ``s`` (masking: pairwise mask seeds). They are kept apart so that reconstructing
a dropped client's ``s`` key (which the protocol allows) never opens the share channels it used.

Every derived key goes through HKDF-SHA256 with an ``info`` string naming its purpose, the round
(``run key`` + ``server round``) and, for pairwise keys, both node ids in canonical order. Shares travel
under ChaCha20-Poly1305 with the round, the sender and the receiver as associated data, so a share replayed
from another round, re-addressed to another receiver or claimed by another sender fails authentication.

References: Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020;
Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROTOCOL = b"xr0-secagg/v1"
_NONCE_LEN = 12


class ShareRejected(ValueError):
    """An encrypted share failed authentication (tampered, replayed, re-addressed or wrong sender)."""


@dataclass(frozen=True)
class KeyPair:
    """Raw 32-byte X25519 keys. The private half never leaves the client in clear."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> "KeyPair":
        sk = X25519PrivateKey.generate()  # OS CSPRNG: key material is never drawn from a seeded generator
        return cls(sk.private_bytes_raw(), sk.public_key().public_bytes_raw())


def round_tag(run_key: str, server_round: int, session: bytes = b"", run_id: int = 0) -> bytes:
    """Bytes that name one secure-aggregation session of one round of one run; bound into every key, every
    ciphertext and every signature, so nothing of one session (a share, a signed key, a consistency signature)
    is valid in another session of the same round."""
    key = run_key.encode()
    return (PROTOCOL + struct.pack(">I", len(key)) + key + struct.pack(">Q", server_round)
            + struct.pack(">QI", run_id, len(session)) + session)


def dh(private: bytes, peer_public: bytes) -> bytes:
    """X25519 shared secret (raises ValueError on a low-order peer key)."""
    if len(peer_public) != 32:
        raise ShareRejected(f"public keys are 32 bytes, got {len(peer_public)}")
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))


def _pair(a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return struct.pack(">QQ", lo, hi)


def derive(secret: bytes, purpose: bytes, tag: bytes, a: int, b: int) -> bytes:
    """A 32-byte key for ``purpose`` between nodes ``a`` and ``b`` (symmetric in a, b) in round ``tag``."""
    info = PROTOCOL + b"|" + purpose + b"|" + tag + b"|" + _pair(a, b)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=PROTOCOL, info=info).derive(secret)


def pairwise_mask_seed(s_private: bytes, peer_s_public: bytes, tag: bytes, me: int, peer: int) -> bytes:
    """Seed of the pairwise mask between ``me`` and ``peer`` (both sides derive the same one)."""
    return derive(dh(s_private, peer_s_public), b"mask", tag, me, peer)


def self_mask_seed(b: bytes, tag: bytes, node: int) -> bytes:
    """Seed of a client's self mask from its secret ``b`` (domain-separated from pairwise seeds)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=PROTOCOL,
                info=PROTOCOL + b"|self-mask|" + tag + struct.pack(">Q", node)).derive(b)


def _aad(tag: bytes, src: int, dst: int) -> bytes:
    # Direction matters here (unlike key derivation): a share from a to b must not pass as one from b to a.
    return PROTOCOL + b"|share|" + tag + struct.pack(">QQ", src, dst)


def encrypt_share(c_private: bytes, dst_c_public: bytes, tag: bytes, src: int, dst: int, plaintext: bytes) -> bytes:
    """``nonce || ChaCha20-Poly1305(plaintext)`` from ``src`` to ``dst``, bound to the round and both ids."""
    key = derive(dh(c_private, dst_c_public), b"channel", tag, src, dst)
    nonce = os.urandom(_NONCE_LEN)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, _aad(tag, src, dst))


def decrypt_share(c_private: bytes, src_c_public: bytes, tag: bytes, src: int, dst: int, blob: bytes) -> bytes:
    """Inverse of :func:`encrypt_share` at ``dst``; raises :class:`ShareRejected` unless authentic."""
    if len(blob) <= _NONCE_LEN + 16:
        raise ShareRejected(f"share from node {src} is too short to be a ciphertext")
    try:
        key = derive(dh(c_private, src_c_public), b"channel", tag, src, dst)
        return ChaCha20Poly1305(key).decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], _aad(tag, src, dst))
    except (InvalidTag, ValueError):
        raise ShareRejected(
            f"share from node {src} to node {dst} failed authentication (tampered, replayed from another "
            "round, or sent under another identity)"
        ) from None
