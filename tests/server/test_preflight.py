"""A release is charged only if it can leave (issue 22, row 2): every hospital answers the coordinator's
preflight before any secure-aggregation set-up or training; those that would refuse are left out with their
reason, and a round that cannot reach its minimum is skipped before anyone trains (no epsilon anywhere).

The real coordinator (:class:`server.run.Coordinator`) drives three in-process hospitals
(:class:`simulation.inprocess.InProcessGrid`) with real state folders, policies and synthetic data.
"""

from __future__ import annotations

import json

import pytest

from client import secagg as client_secagg
from client.app import build_app
from client.preflight import preflight
from server.run import Coordinator
from simulation.inprocess import InProcessGrid
from tests.server import knownapp
from xr0_core.config import from_flat
from xr0_core.privacy.ledger import PrivacyLedger
from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values

N = 3
NODES = [101 + 13 * i for i in range(N)]  # InProcessGrid's node ids


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    from xr0_core.data.synthetic import write_federation

    root = tmp_path_factory.mktemp("hospitals")
    return write_federation(root, N, 8, seed=0, image_size=64)


def _federation(tmp_path, hospitals, policies, **run):
    """Run config (flat), node configs and state folders of three hospitals with the given policies."""
    flat = {"preset": "cpu-tiny", "federation.rounds": 1, "federation.out-dir": str(tmp_path / "out"),
            "train.local-steps": 1, "train.batch-size": 4, "ssl.n-local-crops": 2, "eval.tasks": "none", **run}
    states = [tmp_path / f"state{i}" for i in range(N)]
    for state, values in zip(states, policies):
        save_policy(with_values(SitePolicy(), {"secagg.allow-unpinned": True, **values}), policy_path(state))
    nodes = {i: {"data-path": str(hospitals[i]), "state-dir": str(states[i])} for i in range(N)}
    return flat, nodes, states


def _train_record(tmp_path):
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["rounds"]
    return next(r for r in history if r["kind"] == "train")


SPENT = {"privacy.budget": 0.001, "privacy.run-cap": "all"}  # no noise multiplier leaves room for one step
WILLING = {"privacy.budget": 8.0, "privacy.run-cap": "all"}


@pytest.mark.slow  # the real ClientApp on synthetic DICOMs (indexing; training would follow without the preflight)
def test_a_round_too_few_can_join_is_skipped_before_anyone_trains_or_pays(tmp_path, hospitals):
    flat, nodes, states = _federation(tmp_path, hospitals, [WILLING, SPENT, SPENT],
                                      **{"privacy.enabled": True, "secagg.enabled": True})
    grid = InProcessGrid(build_app(), N, run_config=flat, node_configs=nodes)
    summary = Coordinator(from_flat(flat)).run(grid)

    assert summary["status"] == "stopped" and "preflight: 1 of 3 hospitals" in summary["stop_reason"]
    # Nothing but the preflight was ever sent: no key exchange, no training message.
    assert {m.metadata.message_type for m in grid.sent} == {"query.preflight"}
    # No hospital paid: the willing one has no release at all.
    for state in states:
        ledger = PrivacyLedger(state)
        assert not ledger.exists() or ledger.read().releases == [], state
    train = _train_record(tmp_path)
    assert not train["updated"] and "skipped before any hospital trained" in train["reason"]
    by = {s["node_id"]: s for s in train["sites"]}
    assert by[NODES[0]]["status"] == "skipped"
    for node in NODES[1:]:  # the refusal, with the hospital's (fixed, DP-safe) reason
        assert by[node]["status"] == "failed" and by[node]["reason"].startswith("preflight: privacy ledger"), by[node]


def test_a_hospital_that_refuses_at_preflight_is_left_out_of_the_secure_set(tmp_path, hospitals, monkeypatch):
    """The hospital that does not approve the app version answers at preflight; the secure round runs with the
    other two (its key exchange never includes the refusing hospital) and the record names its reason."""
    import client.approval

    monkeypatch.setattr(client.approval, "_verified", "0.1.0+" + "1" * 64)  # as the hospitals' launchers found it
    flat, nodes, _ = _federation(tmp_path, hospitals, [{}, {"apps.allowed-versions": "0.0.0+0000000000000000"}, {}],
                                 **{"secagg.enabled": True, "eval.every": 0})
    two = with_values(SitePolicy(), {"secagg.min-degree": 1})  # two hospitals left: one neighbour each
    app = knownapp.build(preflight=preflight, trust=client_secagg.in_memory_trust(two))  # real hospital-side checks
    grid = InProcessGrid(app, N, run_config=flat, node_configs=nodes)
    summary = Coordinator(from_flat(flat)).run(grid)

    assert summary["status"] == "completed", summary["stop_reason"]
    setup = [int(m.metadata.dst_node_id) for m in grid.sent if m.metadata.message_type == "query.secagg_setup"]
    assert sorted(setup) == [NODES[0], NODES[2]]
    train = _train_record(tmp_path)
    assert train["updated"] and train["metrics"]["secagg-uploads"] == 2
    refused = next(s for s in train["sites"] if s["node_id"] == NODES[1])
    assert refused["status"] == "failed" and "preflight:" in refused["reason"] and "not approved" in refused["reason"]
