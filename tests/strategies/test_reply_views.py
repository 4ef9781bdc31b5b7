"""Reply arrays read as views (xr0_core.secagg.wire.npy_view, which strategies/fedavg_ssl.reply_arrays uses) and the
in-place update norm (validate)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array

from strategies.aggregate import global_norm, subtract
from strategies.fedavg_ssl import reply_arrays
from xr0_core.secagg.wire import npy_view
from strategies.validate import check_update, squared_distance


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.zeros((0, 3), np.float32),
    np.ones((), np.float16),
    np.arange(5, dtype=np.int64),
])
def test_a_view_equals_what_numpy_load_returns_and_is_read_only(arr):
    data = Array(np.asarray(arr)).data
    view, loaded = npy_view(data), np.load(io.BytesIO(data), allow_pickle=False)
    assert view.shape == loaded.shape and view.dtype == loaded.dtype
    assert np.array_equal(view, loaded)
    assert not view.flags.writeable  # a reply's bytes are never written through
    # the same through a whole reply record, also when the bytes arrive as a view of Ray's object store
    from flwr.app import ArrayRecord

    record = ArrayRecord({"w": Array(np.asarray(arr))})
    assert np.array_equal(reply_arrays(record)["w"], loaded)
    assert np.array_equal(npy_view(np.frombuffer(data, dtype=np.uint8)), loaded)


def test_truncated_bytes_and_object_arrays_are_refused():
    data = Array(np.arange(4, dtype=np.float32)).data
    with pytest.raises(ValueError):
        npy_view(data[:-3])
    with pytest.raises(ValueError):  # bytes past what the header says are refused too
        npy_view(data + b"\0\0\0\0")
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object"):
        npy_view(buf.getvalue())


def test_the_in_place_norm_is_the_old_norm_bit_for_bit():
    rng = np.random.default_rng(3)
    a = {f"p{i}": rng.standard_normal((64, 33)).astype(np.float32) for i in range(4)}
    b = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.1 for k, v in a.items()}
    old = global_norm(subtract(a, b))
    new = float(np.sqrt(sum(squared_distance(a[k], b[k]) for k in a)))
    assert new == old
    # the bound sits exactly between two updates: the one just below passes, the one just above is dropped
    assert check_update(b, a, max_update_norm=old * 1.0001) is None
    assert "max-update-norm" in check_update(b, a, max_update_norm=old * 0.9999)


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((), np.float32), np.zeros((0, 3), np.float32),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.arange(10, dtype=np.int64)[::2], np.ones((1,) * 40, np.float16),
    np.ones(3, ">f8"), np.zeros(4, dtype=[("a", "<f4"), ("b", "<i2")]), np.array(["x", "yz"]), np.zeros(3, bool),
])
def test_npy_bytes_are_np_save_bytes(arr):
    from xr0_core.secagg.wire import npy_bytes

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    assert npy_bytes(arr) == buf.getvalue()


def test_a_remembered_header_never_stands_for_other_bytes():
    from xr0_core.secagg import wire

    a = Array(np.arange(6, dtype=np.float32).reshape(2, 3)).data
    assert npy_view(a).shape == (2, 3) and npy_view(a).shape == (2, 3)  # second read: the remembered header
    # the same values under another header (shape (3, 2)) read as that header says
    b = Array(np.arange(6, dtype=np.float32).reshape(3, 2)).data
    assert len(a) == len(b) and npy_view(b).shape == (3, 2)
    assert np.array_equal(npy_view(b), np.arange(6, dtype=np.float32).reshape(3, 2))
    with pytest.raises(ValueError):  # a known header over too few or too many bytes is still refused
        npy_view(a[:-4])
    with pytest.raises(ValueError):
        npy_view(a + b"\0" * 4)
    with pytest.raises(ValueError):  # a header whose declared length runs past the data
        npy_view(a[:12])
    for version in (b"\x03\x00", b"\x07\x00"):  # 3.0 (utf-8 names) and unknown versions are refused
        with pytest.raises(ValueError, match="version"):
            npy_view(a[:6] + version + a[8:])
    for n in range(wire.HEADER_CACHE + 10):  # bounded
        npy_view(Array(np.zeros(n + 1, np.float32)).data)
    assert len(wire._HEADERS) <= wire.HEADER_CACHE


def test_the_finiteness_check_names_the_same_first_bad_tensor_with_or_without_bounds():
    ref = {"a": np.zeros(3, np.float32), "b": np.ones(4, np.float32), "c": np.ones(2, np.float32)}
    for bad in (np.nan, np.inf, -np.inf):
        upd = {"a": np.zeros(3, np.float32), "b": np.array([1, bad, 1, 1], np.float32),
               "c": np.array([np.nan, 1], np.float32)}
        for bounds in ({}, {"max_update_norm": 10.0}, {"max_update_ratio": 2.0}):
            assert check_update(upd, ref, **bounds) == "b: non-finite values (NaN or inf)"
    # finite values whose difference overflows float32 are not called non-finite: the norm bound drops them
    big = {"a": np.full(3, 3e38, np.float32), "b": np.ones(4, np.float32), "c": np.ones(2, np.float32)}
    far = {"a": np.full(3, -3e38, np.float32), "b": np.ones(4, np.float32), "c": np.ones(2, np.float32)}
    with np.errstate(over="ignore"):
        reason = check_update(far, big, max_update_norm=1.0)
    assert reason is not None and "exceeds federation.max-update-norm" in reason
    assert check_update(far, big) is None  # no bound: finite values pass, as before
