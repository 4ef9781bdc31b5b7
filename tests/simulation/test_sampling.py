"""Large federations train a fraction of their hospitals per round (issue 27): ``federation.fraction-train`` /
``fraction-evaluate`` are Flower's own sampling (FedAvg), ``federation.min-available`` makes a round wait until
that many hospitals are connected, and bad values are refused with the key to fix.

The real coordinator (:class:`server.run.Coordinator`) drives in-process hospitals whose 'training' adds a known
small step (:mod:`tests.server.knownapp`), so only sampling is under test.
"""

from __future__ import annotations

import json

import pytest

from server.run import Coordinator
from simulation.inprocess import InProcessGrid
from tests.server.knownapp import build
from xr0_core.config import ConfigError, from_flat


def _cfg(tmp_path, **flat):
    return from_flat({"preset": "cpu-tiny", "federation.out-dir": str(tmp_path / "out"), "eval.tasks": "none",
                      **flat})


def _sent_to(grid: InProcessGrid, message_type: str) -> dict[str, set[int]]:
    """Round (the message's ``server-round``, as a string) -> the nodes sent a message of ``message_type``."""
    from xr0_core import record_keys as keys

    out: dict[str, set[int]] = {}
    for m in grid.sent:
        if m.metadata.message_type == message_type:
            rnd = str(m.content.config_records[keys.CONFIG][keys.SERVER_ROUND])
            out.setdefault(rnd, set()).add(int(m.metadata.dst_node_id))
    return out


def test_each_round_trains_the_configured_fraction_of_hospitals(tmp_path):
    cfg = _cfg(tmp_path, **{"federation.rounds": 3, "federation.fraction-train": 0.25,
                            "federation.fraction-evaluate": 0.5, "eval.every": 0})
    grid = InProcessGrid(build(), 20)
    summary = Coordinator(cfg).run(grid)
    assert summary["status"] == "completed"

    trained = _sent_to(grid, "train")
    assert sorted(trained) == ["1", "2", "3"]
    assert all(len(nodes) == 5 for nodes in trained.values()), trained  # int(20 * 0.25) per round
    # Flower samples anew every round: three identical draws of 5 of 20 would be a 1 in 2.4e8 event.
    assert len(set.union(*trained.values())) > 5
    # Only the sampled hospitals were asked the preflight, and they are the round's record.
    assert _sent_to(grid, "query.preflight") == trained
    rounds = json.loads((tmp_path / "out" / "metrics.json").read_text())["rounds"]
    for r in (r for r in rounds if r["kind"] == "train"):
        assert {s["node_id"] for s in r["sites"]} == trained[str(r["round"])]
        assert r["metrics"]["replies-ok"] == 5
    evaluated = _sent_to(grid, "evaluate")
    assert list(evaluated) == ["3"] and len(evaluated["3"]) == 10  # the last round, int(20 * 0.5)


def test_never_fewer_than_min_replies_are_sampled_and_evaluation_follows_the_train_fraction(tmp_path):
    cfg = _cfg(tmp_path, **{"federation.rounds": 1, "federation.fraction-train": 0.05,
                            "federation.min-replies": 3})
    grid = InProcessGrid(build(), 10)
    Coordinator(cfg).run(grid)
    assert len(_sent_to(grid, "train")["1"]) == 3  # int(10 * 0.05) = 0 < min-replies
    assert len(_sent_to(grid, "evaluate")["1"]) == 3  # fraction-evaluate 0 (default): as fraction-train


class ConnectingGrid(InProcessGrid):
    """Hospitals connect one at a time: every look at the node list finds one more (up to all of them)."""

    def __init__(self, *args, first: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connected = first
        self.connected_at_first_push: int | None = None

    def get_node_ids(self):
        ids = list(self.node_ids[: self.connected])
        self.connected = min(len(self.node_ids), self.connected + 1)
        return ids

    def push_messages(self, messages):
        if self.connected_at_first_push is None:
            self.connected_at_first_push = self.connected
        return super().push_messages(messages)


def test_a_round_waits_for_min_available_hospitals(tmp_path, monkeypatch):
    import flwr.serverapp.strategy.strategy_utils as strategy_utils

    waits = []
    monkeypatch.setattr(strategy_utils, "sleep", waits.append)  # Flower polls once a second; not in a test
    cfg = _cfg(tmp_path, **{"federation.rounds": 1, "federation.min-available": 6})
    grid = ConnectingGrid(build(), 10, first=2)
    Coordinator(cfg).run(grid)
    # Nothing was sent before six hospitals were connected; Flower waited (polled) for the missing ones.
    assert grid.connected_at_first_push is not None and grid.connected_at_first_push >= 6
    assert len(waits) >= 3
    assert len(_sent_to(grid, "train")["1"]) >= 1


@pytest.mark.parametrize("flat, words", [
    ({"federation.fraction-train": 0.0}, "federation.fraction-train must be in (0, 1]"),
    ({"federation.fraction-train": 1.5}, "federation.fraction-train must be in (0, 1]"),
    ({"federation.fraction-evaluate": -0.1}, "federation.fraction-evaluate must be in [0, 1]"),
    ({"federation.fraction-evaluate": 1.01}, "federation.fraction-evaluate must be in [0, 1]"),
    ({"federation.min-available": 2, "federation.min-replies": 3}, "federation.min-available must be 0"),
    ({"federation.min-available": "many"}, "federation.min-available"),
])
def test_bad_sampling_settings_are_refused_with_the_key_to_fix(flat, words):
    import re

    with pytest.raises(ConfigError, match=re.escape(words)):
        from_flat(flat)


def test_simulate_refuses_min_available_above_its_hospitals(tmp_path, capsys):
    from cli import main

    code = main(["simulate", "--sites", "3", "--out", str(tmp_path / "sim"), "--set", "federation.min-available=5"])
    assert code == 2
    assert "federation.min-available 5 > the 3 simulated hospitals" in capsys.readouterr().err
    assert not (tmp_path / "sim" / "hospitals").exists()  # refused before any hospital was written
