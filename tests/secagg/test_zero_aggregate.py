"""The all-zero round (issue 22, row 4): the last round of a DP + secure-aggregation run aggregated to exactly
zero (every tensor identical to the round before) while every site paid epsilon.

Cause: under DP each site sends its declared weight (1), and with the old fixed ``secagg.weight-cap`` of 50000
a site used 1/50000 of its quantization levels (a step of 1.4e-4 per coordinate with 3 sites); the last round
trains at ``train.min-lr`` (1e-6), so every coordinate rounded to 0. These tests drive real Flower messages in
process (no training: each site adds a known update of the size of a last-round step).
"""

from __future__ import annotations

import random

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import secagg as client_secagg
from strategies.aggregate import ServerOptimizer
from strategies.fedavg_ssl import XR0FedAvg, numpy_to_arrays
from strategies.secagg import InProcessGrid, SecAggGrid, SecAggSettings, XR0SecAggFedAvg
from xr0_core import record_keys as keys
from xr0_core.config import from_flat
from xr0_core.ssl.schedules import Schedules

SHAPES = {"w": (8, 6), "b": (11,)}
INIT = {k: np.full(s, 0.5, np.float32) for k, s in SHAPES.items()}
# The deployment runbook's run: 3 rounds of 1 local step; the last step trains at the cosine's end, min-lr.
RUN = {"preset": "cpu-tiny", "privacy.enabled": True, "secagg.enabled": True, "federation.rounds": 3,
       "train.local-steps": 1, "train.batch-size": 4}
LAST_LR = float(Schedules.build(from_flat(RUN), 3).lr[-1])


def last_round_update(node: int) -> dict[str, np.ndarray]:
    """An AdamW step moves each coordinate by about lr: +-lr, signs seeded by the node."""
    rng = np.random.default_rng(node)
    return {k: (LAST_LR * rng.choice([-1.0, 1.0], size=s)).astype(np.float64) for k, s in SHAPES.items()}


def _app(update=last_round_update, weight: float = 1.0) -> ClientApp:
    def train(msg: Message, context: Context) -> Message:
        node = int(msg.metadata.dst_node_id)
        arrays = msg.content.array_records[keys.ARRAYS]
        upd = update(node)
        new = {k: (arrays[k].numpy().astype(np.float64) + upd[k]).astype(np.float32) for k in sorted(arrays)}
        # Under DP the weight is the policy's declared-examples (1): xr0_core/site/round.py release_metrics.
        return Message(RecordDict({keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in new.items()}),
                                  keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: weight, "epsilon": 1.0})}),
                       reply_to=msg)

    app = ClientApp()
    app.train()(train)
    client_secagg.register(app, train, client_secagg.in_memory_trust())
    return app


def _secure_round(settings: SecAggSettings, n: int = 3):
    grid = InProcessGrid(_app(), n)
    outcomes = []
    strategy = XR0SecAggFedAvg(round_offset=0, local_steps=1, total_rounds=1, run_seed=0, run_key="rk",
                               config_hash="h", server_optimizer=ServerOptimizer(), min_replies=2,
                               on_round_end=outcomes.append)
    strategy.start(grid=SecAggGrid(grid, settings, rng=random.Random(0)), initial_arrays=numpy_to_arrays(INIT),
                   num_rounds=1, train_config=ConfigRecord(), evaluate_config=ConfigRecord())
    return grid, outcomes[0]


def test_last_dp_round_under_secure_aggregation_moves_the_model():
    assert LAST_LR == from_flat(RUN).train.min_lr  # the schedule does end at min-lr
    cfg = from_flat(RUN)
    grid, out = _secure_round(SecAggSettings.from_config(cfg.secagg, cfg.privacy))
    assert out.updated, out.reason
    exact = {k: sum(last_round_update(u)[k] for u in grid.node_ids) / len(grid.node_ids) for k in SHAPES}
    moved = {k: out.arrays[k].numpy().astype(np.float64) - INIT[k] for k in SHAPES}
    assert any(np.any(moved[k] != 0) for k in SHAPES), "the aggregate is exactly zero"
    # Equal to the exact mean of the updates up to the error bound (and float32 storage of the weights).
    err = max(np.abs(moved[k] - exact[k]).max() for k in SHAPES)
    assert err <= out.metrics["secagg-error-bound"] + 6e-8, (err, out.metrics["secagg-error-bound"])
    assert out.metrics["secagg-error-bound"] < LAST_LR / 100


def test_a_weight_cap_that_rounds_the_update_away_is_a_failed_round_with_its_reason():
    cfg = from_flat({**RUN, "secagg.weight-cap": 50000.0})  # the old fixed default
    _, out = _secure_round(SecAggSettings.from_config(cfg.secagg, cfg.privacy))
    assert not out.updated and out.arrays is None
    assert "exactly zero" in out.reason or "error bound" in out.reason, out.reason
    assert all(s.status == "ok" and s.metrics.get("epsilon") == 1.0 for s in out.sites)  # every site paid
    # The warning no longer tells a 32-bit ring to "use secagg.quant-bits = 32".
    assert out.warnings and not any("quant-bits = 32" in w for w in out.warnings), out.warnings
    assert any("weight-cap" in w for w in out.warnings), out.warnings


def test_a_plain_round_whose_sites_return_the_global_weights_is_failed():
    grid = InProcessGrid(_app(update=lambda node: {k: np.zeros(s) for k, s in SHAPES.items()}, weight=3.0), 2)
    outcomes = []
    strategy = XR0FedAvg(round_offset=0, local_steps=1, total_rounds=1, run_seed=0, run_key="rk", config_hash="h",
                         server_optimizer=ServerOptimizer(), min_replies=1, on_round_end=outcomes.append)
    strategy.start(grid=grid, initial_arrays=numpy_to_arrays(INIT), num_rounds=1, train_config=ConfigRecord(),
                   evaluate_config=ConfigRecord())
    out = outcomes[0]
    assert [s.status for s in out.sites] == ["ok", "ok"]
    assert not out.updated and "exactly zero" in out.reason


def test_non_finite_and_tiny_aggregates_are_refused():
    from strategies.validate import aggregate_problem

    ref = {"w": np.ones(4, np.float32)}
    assert "non-finite" in aggregate_problem({"w": np.array([0.0, np.nan, 0, 0])}, ref)
    assert "exactly zero" in aggregate_problem({"w": np.zeros(4)}, ref)
    assert "float32 weights would not change" in aggregate_problem({"w": np.full(4, 1e-12)}, ref)
    assert "error bound" in aggregate_problem({"w": np.full(4, 1e-6)}, ref, resolution=1e-5)
    assert "clipping bound" in aggregate_problem({"w": np.full(4, 1e-8)}, ref, client_clip=1.0)
    assert aggregate_problem({"w": np.full(4, 1e-6)}, ref, resolution=1e-8, client_clip=1.0) is None
