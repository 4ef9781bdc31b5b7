"""simulation/fastpull.py: a full pull whenever a reply may have arrived, otherwise none; never a lost reply."""

from __future__ import annotations

import threading

import pytest

from simulation import fastpull


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.message_res_store: dict[str, str] = {}


class _Grid:
    def __init__(self) -> None:
        self.state = _State()
        self.full_pulls = 0

    def flower_pull(self, ids):  # Flower's pull: every stored reply to an asked id, then deleted
        self.full_pulls += 1
        found = [k for k, v in self.state.message_res_store.items() if v in ids]
        return [self.state.message_res_store.pop(k) for k in found]


@pytest.fixture
def grid(monkeypatch):
    g = _Grid()
    monkeypatch.setattr(fastpull, "_FLOWER_PULL", lambda self, ids: self.flower_pull(ids))
    clock = {"t": 100.0}
    monkeypatch.setattr(fastpull.time, "monotonic", lambda: clock["t"])
    g.clock = clock
    return g


def test_no_new_reply_no_full_pull_and_every_reply_is_returned(grid):
    ids = {"m1", "m2", "m3"}
    assert fastpull.pull_messages(grid, ids) == [] and grid.full_pulls == 1
    for _ in range(5):
        assert fastpull.pull_messages(grid, ids) == []
    assert grid.full_pulls == 1  # nothing stored: skipped
    grid.state.message_res_store["r1"] = "m2"
    assert fastpull.pull_messages(grid, ids) == ["m2"] and grid.full_pulls == 2
    ids.discard("m2")
    fastpull.pull_messages(grid, ids)  # the pull's own deletion changed the store: one more full pull
    assert fastpull.pull_messages(grid, ids) == [] and grid.full_pulls == 3
    grid.state.message_res_store["r2"] = "m1"
    grid.state.message_res_store["r3"] = "m3"
    assert sorted(fastpull.pull_messages(grid, ids)) == ["m1", "m3"]


def test_new_ids_or_a_second_without_a_full_pull_force_one(grid):
    fastpull.pull_messages(grid, {"a"})
    fastpull.pull_messages(grid, {"a"})
    assert grid.full_pulls == 1
    fastpull.pull_messages(grid, {"a", "b"})  # ids the last full pull was not asked: Flower's answer may differ
    assert grid.full_pulls == 2
    grid.clock["t"] += fastpull.FULL_EVERY  # Flower's error replies (expired, node gone) need no stored reply
    fastpull.pull_messages(grid, {"a"})
    assert grid.full_pulls == 3


def test_a_state_without_a_reply_store_gets_flowers_pull_every_time(grid):
    grid.state = object()
    grid.flower_pull = lambda ids: (setattr(grid, "full_pulls", grid.full_pulls + 1), [])[1]
    for _ in range(3):
        fastpull.pull_messages(grid, {"a"})
    assert grid.full_pulls == 3
