"""``xr0 simulate --multimodal``: a hospital with reports and one without in one federation; what leaves a
hospital is float weights and scalar metrics; the report shows bytes per round and zero-shot numbers."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.simulation.simtools import ROOT, fast_set_args, xr0_cmd

pytestmark = pytest.mark.slow  # xr0 simulate (Flower's Simulation Engine on Ray) in a subprocess


@pytest.fixture(scope="module")
def mm_run(tmp_path_factory, bert_dir):
    from xr0_core.data.synthetic import write_federation

    root = tmp_path_factory.mktemp("mmsim")
    data = root / "hospitals"
    dirs = [Path(d) for d in write_federation(data, 2, 40, 3, image_size=64)]
    # The second hospital has no reports at all (its report column is emptied).
    manifest = sorted(dirs)[1] / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**r, "report": ""} for r in rows])
    out = root / "out"
    cmd = xr0_cmd("simulate", "--data", str(data), "--out", str(out), "--rounds", "1", "--multimodal", "--json",
                  *fast_set_args(), "--set", f"multimodal.text-encoder={bert_dir}", "--set", "multimodal.max-tokens=32",
                  "--set", "multimodal.caption-width=32", "--set", "multimodal.text-sharing=top-k",
                  "--set", "eval.tasks=retrieval", "--set", "eval.head-steps=5")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return data, out, json.loads(proc.stdout), proc.stderr


def test_hospital_without_reports_trains_in_the_same_federation(mm_run):
    _, out, summary, stderr = mm_run
    train = [r for r in json.loads((out / "metrics.json").read_text())["rounds"] if r["kind"] == "train"]
    sites = {s["name"]: s for s in train[0]["sites"]}
    assert [s["status"] for s in sites.values()] == ["ok", "ok"]
    names = sorted(sites)
    assert sites[names[0]]["metrics"]["loss-caption"] > 0
    assert sites[names[1]]["metrics"]["loss-caption"] == 0 and sites[names[1]]["metrics"]["loss-dino"] > 0
    assert train[0]["updated"]
    assert "upload per site per round" in stderr and "<- chosen" in stderr


def test_only_float_weights_and_scalar_metrics_leave_a_hospital(mm_run):
    from xr0_core.config import from_flat
    from xr0_core.data.manifest import load_manifest
    from xr0_core.ssl.factory import initial_shared_state

    data, out, summary, _ = mm_run
    cfg = from_flat({k: v for k, v in summary["config"].items()})
    shared = {k: tuple(v.shape) for k, v in initial_shared_state(cfg).items()}
    assert any(k.startswith("text.encoder.layer.1.") for k in shared)  # top-k = 1 layer of the tower travels
    assert not any(k.startswith(("text.embeddings", "text.encoder.layer.0.")) for k in shared)
    entries = []
    for site in sorted((out / "sites").iterdir()):
        entries += [json.loads(line) for line in (site / "audit.jsonl").read_text().splitlines()]
    train = [e for e in entries if e["message_type"].startswith("train") and not e["error"]]
    evals = [e for e in entries if e["message_type"].startswith("evaluate")]
    assert len(train) == 2 and len(evals) == 2
    for e in train + evals:
        assert set(e["records"]) == ({"arrays", "metrics"} if e in train else {"metrics"})
        for name, value in e["records"]["metrics"]["values"].items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), name
    for e in train:
        arrays = e["records"]["arrays"]["arrays"]
        assert {k: tuple(a["shape"]) for k, a in arrays.items()} == shared
        assert {a["dtype"] for a in arrays.values()} == {"float32"}
    secrets = set()
    for manifest in sorted(data.glob("*/manifest.csv")):
        for rec in load_manifest(manifest):
            secrets |= {rec.patient_id, rec.path.name}
            secrets |= {s.strip() for s in (rec.report or "").split(".") if len(s.strip()) > 20}
    blob = json.dumps([e["records"] for e in train + evals])
    assert not [s for s in secrets if s and s in blob]
    total = sum(a["bytes"] for a in train[0]["records"]["arrays"]["arrays"].values())
    assert total >= summary["multimodal"]["bytes_per_round"] == sum(int(np.prod(s)) * 4 for s in shared.values())


def test_report_shows_bytes_per_round_and_zero_shot_per_hospital(mm_run):
    _, out, summary, _ = mm_run
    mm = summary["multimodal"]
    assert mm["text_sharing"] == "top-k" and set(mm["text_bytes"]) == {"all", "top-k", "projection", "frozen"}
    html = (out / "report.html").read_text()
    assert "Image-report pretraining (mXR-0)" in html and "top-k (k=1) (chosen)" in html
    assert "image→report R@5 random" in html and "BLEU-4 random" in html
    evals = [r for r in json.loads((out / "metrics.json").read_text())["rounds"] if r["kind"] == "evaluate"]
    site = sorted(evals[-1]["sites"], key=lambda s: s["name"])
    with_reports, without = site[0]["metrics"], site[1]["metrics"]
    for key in ("zeroshot/image-report/recall@5", "zeroshot/image-report/random/recall@5",
                "zeroshot/report-generation/bleu4", "zeroshot/report-generation/random/bleu4"):
        assert key in with_reports and key not in without


def test_exported_text_tower_and_projections_load_offline(mm_run):
    from xr0_core.export import load_exported
    from xr0_core.export_text import load_text_export

    _, out, _, _ = mm_run
    spec = json.loads((out / "multimodal.json").read_text())
    assert spec["text_tower"] == "text_tower" and (out / "text_tower" / "config.json").is_file()
    text = load_text_export(out)
    z = text.embed_text(["no acute fracture", "a nodule in the left lung"])
    assert z.shape == (2, spec["proj_dim"])
    backbone = load_exported(out / "backbone.safetensors")
    import torch

    feats = backbone.forward_features(torch.zeros(1, 1, 64, 64))[:, 0]
    assert text.image_proj(feats).shape == (1, spec["proj_dim"])
