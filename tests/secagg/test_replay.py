"""Once per round (issue 21, row 4): the coordinator runs round r with every hospital, then again with the
victim "timed out", to subtract the two sums. Real ClientApp handlers with each hospital's own state folder,
policy and pinned keys (client/secagg.py: site_trust): the second session is refused by every hospital that
uploaded, also after a restart, so the coordinator never holds a second sum."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from client import secagg as client_secagg
from fakeclient import SHAPES, fake_evaluate, fake_train, known_update, known_weight
from simulation.inprocess import InProcessGrid
from strategies.fedavg_ssl import numpy_to_arrays
from strategies.secagg import SecAggGrid, SecAggSettings
from xr0_core import record_keys as keys
from xr0_core.secagg import identity
from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values
from xr0_core.site.refusals import UploadRecord

N = 5
INIT = {k: np.full(s, 0.25, np.float32) for k, s in SHAPES.items()}


def _app(mods=()) -> ClientApp:
    app = ClientApp(mods=list(mods))
    app.train()(fake_train)
    app.evaluate()(fake_evaluate)
    client_secagg.register(app, fake_train)  # the real site trust: state folder, policy, pinned keys, record
    return app


@pytest.fixture
def hospitals(tmp_path):
    states = [tmp_path / f"state{i}" for i in range(N)]
    pubs = [identity.public_of(identity.load_or_create(s)).hex() for s in states]
    configs = {}
    for i, state in enumerate(states):
        data = tmp_path / f"data{i}"
        data.mkdir()
        save_policy(with_values(SitePolicy(), {"secagg.peer-keys": [p for j, p in enumerate(pubs) if j != i]}),
                    policy_path(state))
        configs[i] = {"data-path": str(data), "state-dir": str(state)}
    return states, configs


def _train_msgs(grid, server_round=1, run_key="rk"):
    config = ConfigRecord({keys.SERVER_ROUND: server_round, "run-key": run_key})
    return [Message(RecordDict({keys.ARRAYS: numpy_to_arrays(INIT), keys.CONFIG: config}), dst_node_id=u,
                    message_type="train", group_id=str(server_round)) for u in grid.node_ids]


def _round(configs, drop=None, server_round=1):
    grid = InProcessGrid(_app(), N, node_configs=configs, drop=drop)
    return grid, SecAggGrid(grid, SecAggSettings(), rng=random.Random(0)).secure_round(
        _train_msgs(grid, server_round), None)


def test_a_second_session_of_the_same_round_is_refused_even_after_a_restart(hospitals):
    states, configs = hospitals
    grid, first = _round(configs)
    assert first.mean_delta is not None and all(s.status == "ok" for s in first.sites)
    for state in states:  # recorded durably, in each hospital's own state folder
        assert UploadRecord(state).uploaded("rk", 1)
    victim = grid.node_ids[0]
    for restarted in (False, True):  # the same SuperNodes, then fresh ones (a restart) on the same folders
        _, second = _round(configs, drop=lambda _t, n: n == victim) if restarted else (None, SecAggGrid(
            grid, SecAggSettings(), rng=random.Random(1)).secure_round(
                [m for m in _train_msgs(grid) if int(m.metadata.dst_node_id) != victim], None))
        assert second.mean_delta is None  # no second sum: the victim's update (sum1 - sum2) is not computable
        refused = [s for s in second.sites if s.node_id != victim]
        assert refused and all("already sent its masked update for round 1" in s.reason for s in refused)
    # the next round is a new round: the same hospitals take part again
    _, third = _round(configs, server_round=2)
    assert third.mean_delta is not None
    w = {u: known_weight(u) for u in grid.node_ids}
    name = sorted(SHAPES)[0]
    exact = sum(w[u] * known_update(u)[name].astype(np.float64) for u in grid.node_ids) / sum(w.values())
    assert np.abs(third.mean_delta[name] - exact).max() <= third.metrics["secagg-error-bound"] + 1e-6


def test_the_session_is_bound_to_the_training_round_it_masks(hospitals):
    """A coordinator that sets up a session for round 2 but sends round 1's training in it is refused."""
    states, configs = hospitals

    def round_one_inside(msg, context, call_next):  # what the deviating coordinator puts in train.secagg
        if msg.metadata.message_type == "train.secagg":
            msg.content.config_records[keys.CONFIG] = ConfigRecord({keys.SERVER_ROUND: 1, "run-key": "rk"})
        return call_next(msg, context)

    grid = InProcessGrid(_app([round_one_inside]), N, node_configs=configs)
    res = SecAggGrid(grid, SecAggSettings(), rng=random.Random(0)).secure_round(_train_msgs(grid, 2), None)
    assert res.mean_delta is None
    assert all("another round or run than this secure-aggregation session" in s.reason for s in res.sites)
    assert not any(UploadRecord(s).uploaded("rk", 1) or UploadRecord(s).uploaded("rk", 2) for s in states)
