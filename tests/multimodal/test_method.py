"""mXR-0 method: what trains and travels per text-sharing mode, images without reports, losses that fall."""

from __future__ import annotations

import pytest
import torch

from xr0_core.ssl.factory import build_model, initial_shared_state
from xr0_core.ssl.multimodal import MultimodalXR0, text_shared_names
from xr0_core.train.round_state import RoundSpec, run_local_round
from xr0_core.train.trainer import SiteTrainer

from tests.multimodal.mmdata import paired_cache


@pytest.mark.parametrize("mode", ["all", "top-k", "projection", "frozen"])
def test_sharing_mode_decides_what_trains_and_leaves(mm_cfg, mode):
    model = build_model(mm_cfg(**{"multimodal.text-sharing": mode}))
    assert isinstance(model, MultimodalXR0)
    text = text_shared_names(model)
    trainable = {n for n, p in model.student.named_parameters() if p.requires_grad}
    if mode == "all":
        assert "text.embeddings.word_embeddings.weight" in text and "text.encoder.layer.0.output.dense.weight" in text
    elif mode == "top-k":  # 2 layers, k = 1: only layer 1 and the text projection
        assert {n.split(".")[3] for n in text if n.startswith("text.encoder.layer.")} == {"1"}
        assert not any(n.startswith("text.embeddings") for n in text)
    elif mode == "projection":
        assert text == ["contrast.text_proj.bias", "contrast.text_proj.weight"]
    else:
        assert text == []
    shared = model.shared_state_dict()
    # Exactly the trainable parameters travel (plus XR-0's mask token); frozen tower weights stay.
    assert set(shared) == (trainable | {"mask_token"})
    assert all(v.dtype == torch.float32 for v in shared.values())
    assert all(v.ndim >= 1 for v in shared.values())  # Flower's ArrayRecord turns 0-d tensors into [1]
    report = model.sharing_report()
    assert report.to_json()["bytes_per_round"] == sum(4 * v.numel() for v in shared.values())
    assert report.text_bytes["all"] > report.text_bytes["top-k"] > report.text_bytes["projection"] > 0
    assert report.text_bytes["frozen"] == 0


def test_image_without_report_trains_image_losses_only(mm_cfg):
    cfg = mm_cfg(**{"multimodal.text-sharing": "top-k"})
    trainer = SiteTrainer(cfg, [], site="noreports", cache=paired_cache(12, with_reports=False))
    start = initial_shared_state(cfg)
    trainer.load_shared_state_dict(start)
    metrics = trainer.train(3, start_step=0, total_steps=10)
    assert metrics["loss-contrastive"] == 0 and metrics["loss-caption"] == 0
    after = trainer.shared_state_dict()
    text_side = [k for k in after if k.startswith(("text.", "contrast.", "caption."))]
    assert text_side and all(torch.equal(after[k], start[k]) for k in text_side)  # no gradient, no decay
    assert not torch.equal(after["backbone.blocks.0.attn.qkv.weight"], start["backbone.blocks.0.attn.qkv.weight"])


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_multimodal_losses_fall_on_paired_images(mm_cfg):
    cfg = mm_cfg(**{"train.lr": 0.3, "ssl.koleo-weight": 0.0})
    trainer = SiteTrainer(cfg, [], site="a", cache=paired_cache(20))
    rows = []
    trainer.train(25, start_step=0, total_steps=25, on_step=lambda s, m: rows.append(m))
    first = {k: sum(r[k] for r in rows[:5]) / 5 for k in ("loss-contrastive", "loss-caption")}
    last = {k: sum(r[k] for r in rows[-5:]) / 5 for k in ("loss-contrastive", "loss-caption")}
    assert last["loss-caption"] < 0.7 * first["loss-caption"], (first, last)
    assert last["loss-contrastive"] < first["loss-contrastive"], (first, last)


def test_sites_with_and_without_reports_reply_with_the_same_shared_set(mm_cfg, tmp_path):
    """One federation: a hospital without reports trains image-only and its reply aggregates with the others'."""
    cfg = mm_cfg(**{"train.local-steps": 2})
    start = initial_shared_state(cfg)
    replies = []
    for name, reports in (("with", True), ("without", False)):
        tr = SiteTrainer(cfg, [], site=name, cache=paired_cache(10, with_reports=reports))
        shared, metrics = run_local_round(tr, start, RoundSpec(1, 0, 4, 2, "run1"), tmp_path / name)
        replies.append((shared, metrics))
    (a, ma), (b, mb) = replies
    assert a.keys() == b.keys() == start.keys()
    assert ma["loss-caption"] > 0 and mb["loss-caption"] == 0
    mean = {k: (a[k] + b[k]) / 2 for k in a}
    model = build_model(cfg)
    model.load_shared_state_dict(mean)  # the aggregate is a valid global model
