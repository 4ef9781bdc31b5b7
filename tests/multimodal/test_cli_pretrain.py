"""`xr0 pretrain --multimodal` end to end on a tiny site with reports (wiring and outputs, not quality)."""

from __future__ import annotations

import csv
import json

from xr0_core.cli import pretrain, run

from tests.tiny import tiny_set_args
from tests.train.toydata import write_toy_site

TINY = tiny_set_args(**{"ssl.n-local-crops": 1, "model.head-hidden-dim": 32, "model.head-bottleneck-dim": 64})


def test_pretrain_multimodal_reports_zero_shot_recall_and_exports_text_side(tmp_path, capsys, bert_dir):
    data = write_toy_site(tmp_path / "site", 15, seed=0, size=40, with_split=True)
    rows = list(csv.DictReader((data / "manifest.csv").open()))
    with (data / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], "report"])
        w.writeheader()
        w.writerows([{**r, "report": f"FINDINGS: radiograph of the {r['anatomy']}." if i % 4 else ""}
                     for i, r in enumerate(rows)])
    out = tmp_path / "out"
    assert run(["pretrain", "--data", str(data), "--out", str(out), "--steps", "3", "--json", "--multimodal", *TINY,
                "--set", f"multimodal.text-encoder={bert_dir}", "--set", "multimodal.max-tokens=16",
                "--set", "multimodal.caption-width=32"], [pretrain]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    for key in ("retrieval_r5", "retrieval_r5_random", "report_bleu4", "report_bleu4_random"):
        assert isinstance(summary[key], float) and 0.0 <= summary[key] <= 1.0, key
    assert summary["retrieval_pairs"] >= 2
    mm = summary["multimodal"]
    assert mm["text_sharing"] == "projection" and mm["bytes_per_round"] == mm["total_bytes"]["projection"]
    side = json.loads((out / "multimodal.json").read_text())
    assert side["format"] == "xr0-multimodal/1" and any((out / "text_tower" / f).is_file() for f in ("vocab.txt", "tokenizer.json"))
    assert (out / "multimodal_heads.safetensors").is_file() and (out / "backbone.safetensors").is_file()
