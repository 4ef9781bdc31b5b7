"""Mask expansion: a 32-byte seed -> a pseudo-random vector of ring words, from an AES-256-CTR keystream.

The PRG (DESIGN D2: "a keystream keyed by the full shared secret, ChaCha20 or AES-CTR"): AES-256 in counter
mode (NIST SP 800-38A) keyed by the whole 256-bit seed, first counter block ``_IV || 00000002``, the last 32
bits incremented per 16-byte block; word ``i`` of a mask is bytes ``4i .. 4i + 3`` (``2i .. 2i + 1`` for
16-bit rings) of that keystream, little-endian. Flower's SecAgg+ folds its secret to 32 bits for numpy's
MT19937, which a server can brute-force. Each seed keys exactly one stream (seeds are HKDF outputs bound to
the round, the session and both node ids), so the fixed IV is safe. For 16- and 32-bit rings every word
value is equally likely, so a masked word is uniform whatever it hides (up to AES's distinguishing advantage).

How the keystream is computed (issue 27): through OpenSSL's AES-256-**GCM** encryptor of zero bytes. GCM's
ciphertext is, by definition (NIST SP 800-38D, GCTR from ``inc32(J0)`` with ``J0 = IV || 0^31 || 1`` for a
96-bit IV), exactly the CTR keystream above XOR the plaintext; its GHASH tag is never finalized or used.
The reason is speed only: OpenSSL's GCM code uses the CPU's vector AES (VAES / AVX-512, 4 blocks per
instruction) where its CTR code does one block per AES-NI instruction: 21 GB/s against 8.7 GB/s (ChaCha20:
7.3 GB/s) on the 2-core bench machine, ``python bench/secagg.py --prg``; a client of a 10-site round
expands 10 masks of the model's size, so this is most of secure aggregation's own cost. :func:`expand_mask`
(the materialised reference, used by the tests) goes through OpenSSL's CTR mode instead, so the tests check
that both give the same words, and a known-answer test pins them to AES itself
(``tests/secagg/test_streaming.py``). GCM's 32-bit block counter bounds one stream to ``2^32 - 2`` blocks
(64 GiB, :data:`MAX_STREAM_BYTES`); larger masks are refused, never wrapped.

Cost: a client adds one mask per neighbour plus its self mask. :class:`MaskStreams` applies all of them
together over one cache-sized piece of the vector at a time (the keystream is written straight into a reused
buffer, the piece stays in cache across every mask), instead of streaming the whole vector through memory
once per mask. A stream cipher's output depends only on the position, so applying a vector in consecutive
pieces of any sizes gives the same words, bit for bit, as adding each whole mask at once (:func:`expand_mask`;
``tests/secagg/test_streaming.py``).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_IV = b"xr0-secagg-m"  # 96-bit IV of every mask stream (one stream per key: a fixed IV is safe)
_FIRST_COUNTER = 2  # GCM's first keystream block is inc32(J0) = IV || 00000002 (J0 itself only masks the tag)
MAX_STREAM_BYTES = ((1 << 32) - _FIRST_COUNTER) * 16  # before GCM's 32-bit block counter would wrap
CHUNK_WORDS = 1 << 16  # words per piece (256 KB of 32-bit words): piece, keystream and float64 scratch stay in L2


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise ValueError(f"mask seeds are 32 bytes, got {len(seed) if isinstance(seed, bytes) else type(seed)}")


def _keystream(seed: bytes):
    """The mask stream of ``seed`` as OpenSSL's AES-256-GCM encryptor (its output for zero input is the
    AES-256-CTR keystream from counter block ``_IV || 00000002``; see the module docstring)."""
    _check_seed(seed)
    return Cipher(algorithms.AES(seed), modes.GCM(_IV)).encryptor()


def counter_block(index: int) -> bytes:
    """The 16-byte AES input whose encryption is keystream block ``index`` (bytes ``16 index ..``)."""
    return _IV + (_FIRST_COUNTER + index).to_bytes(4, "big")


def expand_mask(seed: bytes, num_words: int, dtype: np.dtype) -> np.ndarray:
    """The whole mask vector of ``num_words`` words of ``dtype`` (uint16 or uint32) for ``seed``: the
    materialised reference, computed with OpenSSL's AES-256-CTR (the protocol itself applies masks with
    :class:`MaskStreams`, whose GCM route must give the same words)."""
    _check_seed(seed)
    dtype = np.dtype(dtype)
    if num_words * dtype.itemsize > MAX_STREAM_BYTES:
        raise ValueError(f"a mask of {num_words} words exceeds one stream's {MAX_STREAM_BYTES} bytes")
    enc = Cipher(algorithms.AES(seed), modes.CTR(counter_block(0))).encryptor()
    return np.frombuffer(enc.update(bytes(num_words * dtype.itemsize)), dtype=dtype).copy()


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
        self._used = 0  # bytes of each stream used so far (all advance together)
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
        self._used += words.size * item
        if self._used > MAX_STREAM_BYTES:
            raise ValueError(f"masks longer than one stream's {MAX_STREAM_BYTES} bytes are refused (the AES counter "
                             "would wrap)")
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
