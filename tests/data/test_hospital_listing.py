"""The cached hospital listing (xr0_core.data.index.hospital_dirs_cached): the same list as hospital_dirs, and
listed again whenever the root folder changed, including a change the clock cannot tell apart."""

from __future__ import annotations

import os
import time

from xr0_core.data.index import hospital_dirs, hospital_dirs_cached


def _age(root, seconds: float) -> int:
    ns = time.time_ns() - int(seconds * 1e9)
    os.utime(root, ns=(ns, ns))
    return ns


def test_listing_follows_the_root_and_is_a_copy(tmp_path):
    for name in ("b", "a", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").write_text("x")
    _age(tmp_path, 60)
    first = hospital_dirs_cached(tmp_path)
    assert first == hospital_dirs(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    first.append(tmp_path / "zzz")  # the caller's list is its own
    assert hospital_dirs_cached(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    (tmp_path / "c").mkdir()  # a new hospital changes the root's modification time
    assert hospital_dirs_cached(tmp_path) == [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    (tmp_path / "a").rmdir()
    _age(tmp_path, 30)
    assert hospital_dirs_cached(tmp_path) == [tmp_path / "b", tmp_path / "c"]


def test_a_listing_made_right_after_a_change_is_not_kept(tmp_path):
    (tmp_path / "a").mkdir()
    stamp = _age(tmp_path, 0.0)  # modified "now": a change within the same clock tick would keep this time
    assert hospital_dirs_cached(tmp_path) == [tmp_path / "a"]
    (tmp_path / "b").mkdir()
    os.utime(tmp_path, ns=(stamp, stamp))  # the same modification time as the first listing saw
    assert hospital_dirs_cached(tmp_path) == [tmp_path / "a", tmp_path / "b"]
