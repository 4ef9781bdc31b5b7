"""The mask PRG is AES-256-CTR (issue 27): the words MaskStreams adds (through OpenSSL's GCM encryptor, for its
vector-AES speed) are the AES-256 encryptions of the documented counter blocks, whatever the piece sizes; and
the masked upload's .npy image is written once and reads back as the words."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from helpers import Federation, make_params
from xr0_core.secagg import masks
from xr0_core.secagg.masks import CHUNK_WORDS, MaskStreams, counter_block, expand_mask
from xr0_core.secagg.session import ClientSession
from xr0_core.secagg.wire import NpyWriter

SEED = bytes(range(32))
# The first 32 keystream bytes for SEED: AES-256(SEED, "xr0-secagg-m" || 00000002) || AES-256(SEED, ... 00000003).
# Pinned so that a change of the PRG (which would make sites of two versions disagree on every mask) fails here.
KAT_HEX = "c7c9faf368f3ac2662eeb286c4a0932e4d64302d8b5af26daac9a885403a44bc"


def _aes_blocks(seed: bytes, first: int, count: int) -> bytes:
    """AES-256 of counter blocks ``first .. first + count - 1``, one block at a time (ECB: the bare cipher)."""
    enc = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    return b"".join(enc.update(counter_block(i)) for i in range(first, first + count))


def _streamed(seed: bytes, n: int, dtype, cuts=()) -> np.ndarray:
    words = np.zeros(n, dtype)
    streams = MaskStreams([(seed, +1)], dtype)
    bounds = [0, *cuts, n]
    for a, b in zip(bounds, bounds[1:]):
        streams.apply_inplace(words[a:b])
    return words


def test_mask_words_are_the_known_aes_256_ctr_keystream():
    assert _streamed(SEED, 8, np.uint32).tobytes().hex() == KAT_HEX
    assert _streamed(SEED, 16, np.uint16).tobytes().hex() == KAT_HEX  # 16-bit rings: the same bytes, two per word
    assert _aes_blocks(SEED, 0, 2).hex() == KAT_HEX


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_streamed_masks_are_aes_of_the_counter_blocks_across_pieces(dtype):
    seed = os.urandom(32)
    n = 2 * CHUNK_WORDS + 13  # crosses piece boundaries; odd cuts split a 16-byte block
    words = _streamed(seed, n, dtype, cuts=(5, CHUNK_WORDS - 1, CHUNK_WORDS + 7))
    nbytes = n * np.dtype(dtype).itemsize
    blocks = -(-nbytes // 16)
    expected = np.frombuffer(_aes_blocks(seed, 0, blocks)[:nbytes], dtype=dtype)
    assert np.array_equal(words, expected)
    # the CTR-mode reference (expand_mask, OpenSSL's CTR code) agrees with the GCM route
    assert np.array_equal(expand_mask(seed, n, dtype), words)


def test_different_seeds_give_unrelated_masks():
    a, b = _streamed(SEED, 4096, np.uint32), _streamed(bytes(31) + b"\x01", 4096, np.uint32)
    assert np.count_nonzero(a == b) < 10  # equal words by chance: 4096 / 2^32 expected


def test_a_mask_longer_than_one_stream_is_refused(monkeypatch):
    monkeypatch.setattr(masks, "MAX_STREAM_BYTES", 64)
    streams = MaskStreams([(SEED, +1)], np.uint32)
    streams.apply_inplace(np.zeros(16, np.uint32))  # exactly the limit
    with pytest.raises(ValueError, match="counter"):
        streams.apply_inplace(np.zeros(1, np.uint32))
    with pytest.raises(ValueError, match="exceeds one stream"):
        expand_mask(SEED, 17, np.uint32)


def test_npy_writer_image_reads_back_with_numpy_and_checks_its_length():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**32, 1000, dtype=np.uint32)
    w = NpyWriter(np.uint32, words.size)
    for a, b in ((0, 10), (10, 999), (999, 1000)):
        w.write(words[a:b])
    data = w.getvalue()
    assert isinstance(data, bytes)
    assert np.array_equal(np.load(io.BytesIO(data), allow_pickle=False), words)
    short = NpyWriter(np.uint32, 3)
    short.write(words[:2])
    with pytest.raises(ValueError, match="2 of 3 words"):
        short.getvalue()
    with pytest.raises(ValueError, match="more than the 3"):
        short.write(words[:2])
    with pytest.raises(ValueError, match="uint32"):
        NpyWriter(np.uint32, 3).write(np.zeros(3, np.uint16))


def test_masked_upload_image_is_the_masked_words():
    params, graph = make_params(3)
    n = CHUNK_WORDS + 3
    fed = Federation(params, graph, n + 1)
    fed.setup()
    fed.share_keys()
    u = sorted(graph)[0]
    session: ClientSession = fed.sessions[u]
    session.receive_shares(fed.server.shares_for(u))
    update = np.random.default_rng(1).normal(0, 0.01, n)
    up = session.mask_pieces([update[:100], update[100:]], n, 10.0)
    assert np.array_equal(np.load(io.BytesIO(up.npy), allow_pickle=False), up.words)
    assert up.words.shape == (n + 1,) and not up.words.flags.writeable
    assert np.count_nonzero(up.words) > n // 2  # masked: not the small quantized values
