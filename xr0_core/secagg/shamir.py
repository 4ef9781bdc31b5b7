"""Shamir secret sharing over the prime field GF(2^521 - 1).

A secret of up to 64 bytes is read as one field element (the prime exceeds 2^512, so no chunking and no
padding oracle); a share is ``x || y`` with ``x`` an 8-byte holder coordinate (node id + 1, never 0) and
``y`` a 66-byte field element. Any ``t`` distinct shares give the secret back; fewer reveal nothing about it.

References: Shamir, "How to share a secret", CACM 1979.
"""

from __future__ import annotations

import secrets
import struct

PRIME = (1 << 521) - 1  # Mersenne prime
_Y_BYTES = 66
_MAX_SECRET = 64
SHARE_BYTES = 8 + _Y_BYTES


class ShamirError(ValueError):
    """Shares that cannot give a secret back (too few, duplicated, malformed)."""


def holder_x(node_id: int) -> int:
    """Evaluation point of a holder: node ids are >= 0, and x = 0 would be the secret itself."""
    return node_id + 1


def split(secret: bytes, threshold: int, holders: list[int]) -> dict[int, bytes]:
    """Shares of ``secret`` for each node in ``holders``; any ``threshold`` of them reconstruct it.

    Parameters
    ----------
    secret : bytes
        At most 64 bytes (key material; its length is fixed by the caller and restored on combine).
    threshold : int
        t, with ``1 <= t <= len(holders)``.
    holders : list of int
        Distinct node ids.

    Returns
    -------
    dict node id -> share bytes (74 bytes each)
    """
    if not 0 < len(secret) <= _MAX_SECRET:
        raise ShamirError(f"secrets are 1..{_MAX_SECRET} bytes, got {len(secret)}")
    if len(set(holders)) != len(holders):
        raise ShamirError("share holders must be distinct")
    if not 1 <= threshold <= len(holders):
        raise ShamirError(f"threshold {threshold} must be in 1..{len(holders)} (the number of holders)")
    # Coefficients from the OS CSPRNG: a seeded generator here would make the shares guessable.
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out: dict[int, bytes] = {}
    for node in holders:
        x = holder_x(node)
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out[node] = struct.pack(">Q", x) + y.to_bytes(_Y_BYTES, "big")
    return out


def combine(shares: list[bytes], threshold: int, secret_len: int) -> bytes:
    """The secret from at least ``threshold`` distinct shares (Lagrange interpolation at 0)."""
    points: dict[int, int] = {}
    for share in shares:
        if len(share) != SHARE_BYTES:
            raise ShamirError(f"a share is {SHARE_BYTES} bytes, got {len(share)}")
        x = struct.unpack(">Q", share[:8])[0]
        y = int.from_bytes(share[8:], "big")
        if x == 0 or y >= PRIME:
            raise ShamirError("malformed share")
        if x in points and points[x] != y:
            raise ShamirError("two different shares for the same holder")
        points[x] = y
    if len(points) < threshold:
        raise ShamirError(f"{len(points)} distinct shares < threshold {threshold}")
    xs = list(points)[:threshold]
    secret = 0
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + points[xi] * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * secret_len):
        raise ShamirError("shares do not reconstruct a secret of the expected length (inconsistent shares)")
    return secret.to_bytes(secret_len, "big")
