"""End to end on Flower's Simulation Engine: 4 hospitals, one of which drops out while training.
Secure aggregation must give the same global weights as the plain run (within the quantization bound),
and the coordinator's records must show the dropout and hold no single hospital's update."""

from __future__ import annotations

import json

import cloudpickle
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.secagg import dropmod

pytestmark = pytest.mark.slow  # Flower's Simulation Engine on Ray

TINY = {
    "train.local-steps": 1, "train.batch-size": 4, "ssl.n-local-crops": 2, "model.head-out-dim": 256,
    "model.ibot-out-dim": 256, "model.head-hidden-dim": 64, "federation.rounds": 1,
}


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    from xr0_core.data.synthetic import write_federation

    root = tmp_path_factory.mktemp("sa-hospitals")
    write_federation(root, 4, 12, seed=0, image_size=64)
    return root


def _run(hospitals, out, secagg: bool):
    from client.app import build_app
    from simulation.engine import run_federation
    from xr0_core.config import from_flat

    cfg = from_flat({"preset": "cpu-tiny", **TINY, "secagg.enabled": secagg, "federation.out-dir": str(out),
                     "simulation.data-root": str(hospitals), "simulation.state-root": str(out / "sites")})
    cloudpickle.register_pickle_by_value(dropmod)
    try:
        run_federation(cfg, 4, app_dir=out / "flower-app", client_app=build_app([dropmod.crash_in_training(1)]))
    finally:
        cloudpickle.unregister_pickle_by_value(dropmod)
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    weights = load_file(str(out / "checkpoints" / "round-0001" / "weights.safetensors"))
    return [r for r in rounds if r["kind"] == "train"][0], weights


@pytest.fixture(scope="module")
def runs(hospitals, tmp_path_factory):
    plain = _run(hospitals, tmp_path_factory.mktemp("plain"), secagg=False)
    secure = _run(hospitals, tmp_path_factory.mktemp("secure"), secagg=True)
    return plain, secure


def test_secure_run_matches_plain_run_with_a_dropout(runs):
    (plain_round, plain_w), (sec_round, sec_w) = runs
    assert sec_round["updated"] and plain_round["updated"]
    assert sec_round["metrics"]["secagg-uploads"] == 3 and sec_round["metrics"]["secagg-dropped"] == 1
    failed = [s for s in sec_round["sites"] if s["status"] != "ok"]
    assert len(failed) == 1 and "injected dropout" in failed[0]["reason"]
    bound = sec_round["metrics"]["secagg-error-bound"]
    worst = max(float(np.abs(sec_w[k].astype(np.float64) - plain_w[k]).max()) for k in plain_w)
    # + fp32 rounding of the stored weights (|w| < 64 -> spacing <= 4e-6)
    assert worst <= bound + 4e-6, (worst, bound)
    assert sec_round["metrics"]["num-examples"] == pytest.approx(plain_round["metrics"]["num-examples"], rel=1e-4)
