"""The per-actor memory bound (issue 27): one Ray actor serves many simulated hospitals in turn and keeps the
decoded images of the most recent ones only, within ``simulation.site-cache-mb`` and ``MAX_CACHED_SITES``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from client import runtime


@pytest.fixture
def empty_cache(monkeypatch):
    monkeypatch.setattr(runtime, "_SITES", type(runtime._SITES)())
    return runtime._SITES


def _site(mb: float) -> runtime.SiteData:
    return runtime.SiteData([], SimpleNamespace(_images=torch.zeros(int(mb * 2**20 / 4), dtype=torch.float32)))


def test_least_recently_used_hospitals_go_first_within_the_byte_budget(empty_cache):
    for name in "abcd":
        empty_cache[name] = _site(1.0)
    empty_cache.move_to_end("a")  # used again: the newest
    runtime.evict_sites(max_sites=10, max_bytes=int(2.5 * 2**20))
    assert list(empty_cache) == ["d", "a"]  # b, c were the least recently used
    assert sum(runtime.cached_bytes(d) for d in empty_cache.values()) == 2 * 2**20


def test_the_count_bound_holds_and_the_hospital_in_use_always_stays(empty_cache):
    for name in "abcdef":
        empty_cache[name] = _site(0.1)
    runtime.evict_sites(max_sites=4, max_bytes=2**30)
    assert list(empty_cache) == ["c", "d", "e", "f"]
    empty_cache["big"] = _site(3.0)
    runtime.evict_sites(max_sites=4, max_bytes=2**20)  # one hospital alone is over the budget: it is in use
    assert list(empty_cache) == ["big"]


def test_prepared_shards_count_as_no_ram(empty_cache):
    empty_cache["mapped"] = runtime.SiteData([], SimpleNamespace())  # PreparedImages: memory-mapped, no _images
    assert runtime.cached_bytes(empty_cache["mapped"]) == 0
