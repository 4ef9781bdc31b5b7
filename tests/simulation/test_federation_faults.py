"""A round survives a hospital that crashes and one that returns NaN weights; what leaves a hospital is
float weights of the shared set and scalar metrics, nothing else (DESIGN D4)."""

from __future__ import annotations

import json
import math

import cloudpickle
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.simulation import faults
from tests.simulation.simtools import FAST, kill_new_ray, ray_processes

pytestmark = pytest.mark.slow  # Flower's Simulation Engine on Ray


@pytest.fixture(scope="module")
def faulty_run(hospitals, tmp_path_factory):
    from client.app import build_app
    from simulation.engine import run_federation
    from xr0_core.config import from_flat

    out = tmp_path_factory.mktemp("faulty")
    cfg = from_flat({
        "preset": "cpu-tiny", **FAST, "federation.rounds": 2, "federation.out-dir": str(out),
        "simulation.data-root": str(hospitals), "simulation.state-root": str(out / "sites"),
    })
    cloudpickle.register_pickle_by_value(faults)  # Ray workers need the mods' code, not an import path
    before = ray_processes()
    try:
        run_federation(cfg, 4, app_dir=out / "flower-app", client_app=build_app([faults.crash_on(2), faults.nan_on(3)]))
    finally:
        left = kill_new_ray(before)
        cloudpickle.unregister_pickle_by_value(faults)
    assert not left, f"the simulation left {len(left)} Ray processes"
    return cfg, out


def test_round_goes_on_without_the_crashed_and_the_nan_hospital(faulty_run):
    cfg, out = faulty_run
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    train = [r for r in rounds if r["kind"] == "train"]
    assert [r["round"] for r in train] == [1, 2]
    for r in train:
        status = sorted(s["status"] for s in r["sites"])
        assert status == ["dropped", "failed", "ok", "ok"], r["sites"]
        failed = next(s for s in r["sites"] if s["status"] == "failed")
        dropped = next(s for s in r["sites"] if s["status"] == "dropped")
        assert "injected failure" in failed["reason"]
        assert "secret_patient" not in failed["reason"], "a local path left the hospital in an error"
        assert "non-finite" in dropped["reason"] and dropped["name"] == "site03"
        assert failed["name"] == "site02", "the coordinator names a failed simulated hospital from its error tag"
        assert r["updated"] and r["metrics"]["replies-ok"] == 2
    weights = load_file(str(out / "checkpoints" / "round-0002" / "weights.safetensors"))
    assert all(np.isfinite(v).all() for v in weights.values())
    report = (out / "report.html").read_text()
    assert "non-finite" in report and "injected failure" in report


def test_every_outgoing_message_holds_only_float_shared_weights_and_scalars(faulty_run):
    cfg, out = faulty_run
    from xr0_core.ssl.factory import initial_shared_state

    shared = {k: (tuple(v.shape)) for k, v in initial_shared_state(cfg).items()}
    entries = []
    for site in sorted((out / "sites").iterdir()):
        log = site / "audit.jsonl"
        entries += [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    train = [e for e in entries if e["message_type"].startswith("train") and not e["error"]]
    evals = [e for e in entries if e["message_type"].startswith("evaluate")]
    assert len(train) == 2 * 3, "three hospitals reply to each of two rounds (one crashes)"
    assert len(evals) == 4
    for e in train + evals:
        kinds = {name: rec["kind"] for name, rec in e["records"].items()}
        expected = {"arrays": "arrays", "metrics": "metrics"} if e in train else {"metrics": "metrics"}
        assert kinds == expected, kinds
        for name, value in e["records"]["metrics"]["values"].items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
            assert math.isfinite(value)
    for e in train:
        arrays = e["records"]["arrays"]["arrays"]
        assert {k: tuple(a["shape"]) for k, a in arrays.items()} == shared
        assert {a["dtype"] for a in arrays.values()} == {"float32"}
    # Nothing that identifies a patient or a file appears anywhere in what left: ids, file names, report text.
    from xr0_core.data.manifest import load_manifest

    secrets = set()
    for manifest in sorted(cfg_root(cfg).glob("*/manifest.csv")):
        for rec in load_manifest(manifest):
            secrets |= {rec.patient_id, rec.path.name, rec.path.stem}
            secrets |= {sentence.strip() for sentence in (rec.report or "").split(".") if len(sentence.strip()) > 20}
    blob = json.dumps([e["records"] for e in train + evals])
    leaked = sorted(s for s in secrets if s and s in blob)
    assert not leaked, leaked[:5]
    total = sum(a["bytes"] for a in train[0]["records"]["arrays"]["arrays"].values())
    n_float32 = sum(int(np.prod(shape)) * 4 for shape in shared.values())
    assert n_float32 <= total < n_float32 + 256 * len(shared), "arrays carry more than their float32 values"


def cfg_root(cfg):
    from pathlib import Path

    return Path(cfg.simulation.data_root)
