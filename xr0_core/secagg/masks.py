"""Mask expansion: a 32-byte seed -> a pseudo-random vector of ring words, from a ChaCha20 keystream.

The whole 256-bit seed keys the stream cipher (Flower's SecAgg+ folds its secret to 32 bits for numpy's
MT19937, which a server can brute-force). Each seed is used for exactly one stream, so the fixed nonce is
safe. Words are taken directly from keystream bytes: for 16- and 32-bit rings every word value is equally
likely, so a masked word is uniform whatever it hides. Work is chunked so a 22 M-parameter mask never sits
in memory whole.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

# 16 bytes as cryptography's ChaCha20 takes them (RFC 7539 layout): a 4-byte little-endian initial block
# counter ("xr0-" = 758 M) and a 12-byte nonce. From there the 32-bit counter has ~3.5e9 64-byte blocks
# (~225 GB) before it wraps; the largest mask here is under 1 GB.
_NONCE = b"xr0-secagg-mask\x00"
_CHUNK_BYTES = 1 << 22


def _keystream(seed: bytes):
    if len(seed) != 32:
        raise ValueError(f"mask seeds are 32 bytes, got {len(seed)}")
    return Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()


def expand_mask(seed: bytes, num_words: int, dtype: np.dtype) -> np.ndarray:
    """The mask vector of ``num_words`` words of ``dtype`` (uint16 or uint32) for ``seed``."""
    dtype = np.dtype(dtype)
    return np.frombuffer(_keystream(seed).update(bytes(num_words * dtype.itemsize)), dtype=dtype).copy()


def apply_mask_inplace(words: np.ndarray, seed: bytes, sign: int) -> None:
    """``words <- words + sign * mask(seed)`` modulo 2^bits (numpy unsigned arithmetic wraps).

    Parameters
    ----------
    words : np.ndarray, shape [N], uint16 or uint32
        Modified in place.
    seed : bytes
        32-byte seed.
    sign : int
        +1 to add the mask, -1 to remove it.
    """
    if sign not in (1, -1):
        raise ValueError("sign must be +1 or -1")
    enc = _keystream(seed)
    per_chunk = _CHUNK_BYTES // words.itemsize
    zeros = bytes(per_chunk * words.itemsize)
    for start in range(0, words.size, per_chunk):
        n = min(per_chunk, words.size - start)
        mask = np.frombuffer(enc.update(zeros[: n * words.itemsize]), dtype=words.dtype)
        view = words[start : start + n]
        if sign > 0:
            np.add(view, mask, out=view)
        else:
            np.subtract(view, mask, out=view)
