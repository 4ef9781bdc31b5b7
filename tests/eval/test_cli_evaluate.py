"""`xr0 evaluate`: the JSON contract, qualitative report, and bad input reported with its row."""

import json

import pytest

from xr0_core.cli import run
from xr0_core.cli.commands import CORE_COMMANDS

FAST = ["--set", "eval.head-steps=3", "--set", "eval.head-batch-size=8", "--set", "train.device=cpu"]


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_json_contract_and_report(site_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run(["evaluate", "--checkpoint", "random", "--data", str(site_dir), "--tasks",
              "classification,segmentation,landmarks", "--json", "--out", str(out), "--examples", "2", *FAST],
             CORE_COMMANDS)
    assert rc == 0
    body = json.loads(capsys.readouterr().out)
    assert set(body) >= {"tasks", "baseline_random", "skipped"}
    assert body["tasks"] and body["tasks"] == body["baseline_random"]  # random vs itself
    assert all(t.split("/")[0] in ("classification", "segmentation", "landmarks") for t in body["tasks"])
    assert "segmentation/mask" in body["tasks"] and "landmarks/points" in body["tasks"]
    html = (out / "report.html").read_text()
    assert "segmentation/mask" in html and (out / "example_random_segmentation_mask.png").is_file()


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_exported_backbone_checkpoint(site_dir, tmp_path, capsys):
    from xr0_core.config import from_flat
    from xr0_core.eval.baseline import backbone_from_shared
    from xr0_core.export import export_backbone

    cfg = from_flat({"seed": 5})
    path = tmp_path / "backbone.safetensors"
    export_backbone(backbone_from_shared(cfg, None), cfg.model, path)
    rc = run(["evaluate", "--checkpoint", str(path), "--data", str(site_dir), "--tasks", "classification",
              "--json", *FAST], CORE_COMMANDS)
    assert rc == 0
    body = json.loads(capsys.readouterr().out)
    assert body["tasks"] and body["tasks"] != body["baseline_random"]


def test_non_numeric_label_fails_with_row(site_dir, tmp_path, capsys):
    lines = (site_dir / "manifest.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("label_nodule")
    cells = lines[2].rsplit(",", len(header) - col)  # label columns are last and never quoted
    cells[1] = "yes"
    lines[2] = ",".join(cells)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    rc = run(["evaluate", "--checkpoint", "random", "--data", str(site_dir), "--manifest", str(manifest),
              "--json", *FAST], CORE_COMMANDS)
    assert rc == 2
    err = capsys.readouterr().err
    assert "row 2: label_nodule: 'yes' is not an integer class index" in err
