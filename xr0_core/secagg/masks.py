"""Mask expansion: a 32-byte seed -> a pseudo-random vector of ring words, from a ChaCha20 keystream.

The whole 256-bit seed keys the stream cipher (Flower's SecAgg+ folds its secret to 32 bits for numpy's
MT19937, which a server can brute-force). Each seed is used for exactly one stream, so the fixed nonce is
safe. Words are taken directly from keystream bytes: for 16- and 32-bit rings every word value is equally
likely, so a masked word is uniform whatever it hides.

Cost (issue 27): a client adds one mask per neighbour plus its self mask, so the masks are most of secure
aggregation's work. :class:`MaskStreams` applies all of them together over one cache-sized piece of the
vector at a time (the keystream is written straight into a reused buffer, the piece stays in cache across
every mask), instead of streaming the whole vector through memory once per mask. A stream cipher's output
depends only on the position, so applying a vector in consecutive pieces of any sizes gives the same words,
bit for bit, as adding each whole mask at once (:func:`expand_mask`; ``tests/secagg/test_streaming.py``).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# The initial 128-bit counter block of AES-256-CTR. Each seed keys exactly one stream, so a fixed start is
# safe; the counter (the whole 16 bytes, big-endian) cannot wrap within any mask (2^128 blocks).
_NONCE = b"xr0-secagg-mask\x00"
CHUNK_WORDS = 1 << 16  # words per piece (256 KB of 32-bit words): piece, keystream and float64 scratch stay in L2


def _keystream(seed: bytes):
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise ValueError(f"mask seeds are 32 bytes, got {len(seed) if isinstance(seed, bytes) else type(seed)}")
    return Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()


def expand_mask(seed: bytes, num_words: int, dtype: np.dtype) -> np.ndarray:
    """The whole mask vector of ``num_words`` words of ``dtype`` (uint16 or uint32) for ``seed`` (the
    materialised reference; the protocol itself applies masks with :class:`MaskStreams`)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(_keystream(seed).update(bytes(num_words * dtype.itemsize)), dtype=dtype).copy()


class MaskStreams:
    """Several masks added (sign +1) or removed (sign -1) together, over consecutive pieces of one vector.

    Each mask's keystream advances by exactly the words it is applied to, so calling :meth:`apply_inplace`
    on consecutive slices ``words[0:a]``, ``words[a:b]``, ... gives the same result as on ``words`` at once.

    Parameters
    ----------
    masks : iterable of (seed, sign)
        32-byte seeds and +1 / -1.
    dtype : np.dtype
        Ring word type, uint16 or uint32.
    """

    def __init__(self, masks: Iterable[tuple[bytes, int]], dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ValueError(f"ring words are uint16 or uint32, got {self.dtype}")
        self._streams = []
        for seed, sign in masks:
            if sign not in (1, -1):
                raise ValueError("sign must be +1 or -1")
            self._streams.append((_keystream(seed), sign))
        self._zeros = memoryview(bytes(CHUNK_WORDS * self.dtype.itemsize))
        self._raw = bytearray(CHUNK_WORDS * self.dtype.itemsize)  # keystream of one piece, reused
        self._out = memoryview(self._raw)
        self._key = np.frombuffer(self._raw, dtype=self.dtype)

    def __len__(self) -> int:
        return len(self._streams)

    def apply_inplace(self, words: np.ndarray) -> None:
        """``words <- words + sum(sign * mask)`` modulo 2^bits for the next ``words.size`` words of every mask.

        Parameters
        ----------
        words : np.ndarray, shape [N], ``dtype``, C-contiguous
            The next piece of the vector; modified in place (numpy unsigned arithmetic wraps).
        """
        if words.dtype != self.dtype or words.ndim != 1 or not words.flags.c_contiguous:
            raise ValueError(f"masks apply to a contiguous 1-D {self.dtype} vector")
        item = self.dtype.itemsize
        for start in range(0, words.size, CHUNK_WORDS):
            piece = words[start : start + CHUNK_WORDS]
            key = self._key[: piece.size]
            zeros, out = self._zeros[: piece.size * item], self._out[: piece.size * item]
            for enc, sign in self._streams:
                enc.update_into(zeros, out)  # keystream XOR zeros = keystream, written into the buffer
                if sign > 0:
                    np.add(piece, key, out=piece)
                else:
                    np.subtract(piece, key, out=piece)


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
    MaskStreams([(seed, sign)], words.dtype).apply_inplace(words)
