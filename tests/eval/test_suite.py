"""The evaluation suite on a synthetic hospital: every family, pretrained vs random, skips and bad input."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from xr0_core.eval.suite import evaluate_backbone, select_tasks
from xr0_core.eval.tasks.base import EvalDataError, ViewGeometry, build_eval_set, extract, letterbox

FAMILIES = ("classification", "retrieval", "segmentation", "landmarks", "grounding", "report_generation")


def _other_weights(cfg):
    from xr0_core.config import from_flat
    from xr0_core.ssl.factory import build_model

    return build_model(from_flat({**cfg.to_flat(), "seed": cfg.seed + 1})).shared_state_dict()


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_every_family_reports_pretrained_and_random(fast_cfg, records):
    result = evaluate_backbone(fast_cfg, records, _other_weights(fast_cfg), device="cpu")
    for family in FAMILIES:
        for side in (result.tasks, result.baseline_random):
            fam = {t: m for t, m in side.items() if t.startswith(family + "/")}
            assert fam, f"{family} produced no task"
            assert all(m and all(math.isfinite(v) for v in m.values()) for m in fam.values())
    assert result.tasks != result.baseline_random  # two different backbones, same heads' seeds
    flat = result.flat_metrics()
    assert flat["segmentation/mask/num-examples"] == result.counts["segmentation/mask"] > 0
    assert "segmentation/mask/random/dice-mean" in flat and "segmentation/mask/dice-mean" in flat
    assert all(isinstance(v, float) for v in flat.values())
    assert "grounding/phrase-box" in result.counts


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_same_backbone_gives_same_numbers_as_baseline(fast_cfg, records):
    """Heads are seeded identically for both backbones: evaluating the random init itself equals the baseline."""
    from xr0_core.ssl.factory import build_model

    cfg = dataclasses.replace(fast_cfg, eval=dataclasses.replace(fast_cfg.eval, tasks="classification,segmentation"))
    result = evaluate_backbone(cfg, records, build_model(cfg).shared_state_dict(), device="cpu")
    assert result.tasks == result.baseline_random


def test_absent_columns_are_skipped_not_faked(fast_cfg, records):
    bare = [dataclasses.replace(r, report=None, mask_path=None, landmarks=None, boxes=None) for r in records]
    result = evaluate_backbone(fast_cfg, bare, None, device="cpu")
    assert {t.split("/")[0] for t in result.tasks} == {"classification", "retrieval"}
    skipped = " | ".join(result.skipped)
    for family in ("segmentation", "landmarks", "grounding", "report_generation", "retrieval/image-report"):
        assert family in skipped


def test_wrong_mask_size_fails_with_row(fast_cfg, records, tmp_path):
    from PIL import Image

    bad = tmp_path / "bad.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad)
    broken = [dataclasses.replace(r, mask_path=bad) if i == 2 else r for i, r in enumerate(records)]
    with pytest.raises(EvalDataError, match=rf"row {records[2].row}: mask_path: mask is 12x10"):
        evaluate_backbone(fast_cfg, broken, None, tasks="segmentation", device="cpu")
    lenient = evaluate_backbone(fast_cfg, broken, None, tasks="segmentation,classification", device="cpu",
                                strict=False)
    assert "segmentation/mask" not in lenient.tasks and lenient.tasks
    assert any("mask_path" in s for s in lenient.skipped)


def test_landmark_outside_image_fails_with_row(fast_cfg, records):
    broken = [dataclasses.replace(r, landmarks=((500.0, 3.0),)) if i == 5 else r for i, r in enumerate(records)]
    with pytest.raises(EvalDataError, match=rf"row {records[5].row}: landmarks: landmark 0 \(500, 3\) is outside"):
        evaluate_backbone(fast_cfg, broken, None, tasks="landmarks", device="cpu")


def test_unknown_task_name_lists_families():
    with pytest.raises(ValueError, match="families: classification"):
        select_tasks("segmentatoin", ["segmentation/mask"])
    assert select_tasks("retrieval/image-image", ["retrieval/image-image/anatomy", "retrieval/image-report"]) == [
        "retrieval/image-image/anatomy"]


def test_letterbox_geometry_maps_points_both_ways():
    img = np.zeros((40, 100), np.float32)
    img[30, 80] = 1.0  # (x=80, y=30)
    view, geo = letterbox(img, 50)
    assert view.shape == (1, 50, 50) and geo.inner == (15, 0, 20, 50)
    peak = np.unravel_index(int(view[0].argmax()), (50, 50))
    vx, vy = geo.to_view(np.array([80.0, 30.0]))
    assert abs(peak[1] - vx) <= 1 and abs(peak[0] - vy) <= 1
    np.testing.assert_allclose(geo.to_original(geo.to_view(np.array([[3.0, 7.5]]))), [[3.0, 7.5]])
    box = np.array([10.0, 5.0, 60.0, 25.0])
    np.testing.assert_allclose(geo.box_to_original(geo.box_to_view(box)), box)
    assert ViewGeometry.letterbox(40, 100, 50, (0.2, 0.1)).spacing_mm == (0.2, 0.1)


def test_features_are_batch_independent_and_gradient_free(fast_cfg, records):
    from xr0_core.eval.baseline import backbone_from_shared

    data = build_eval_set(records[:10], fast_cfg.model.img_size, seed=0)
    vit = backbone_from_shared(fast_cfg, None)
    a = extract(vit, data, patches=True, batch_size=3)
    b = extract(vit, data, patches=True, batch_size=10)
    torch.testing.assert_close(a.cls, b.cls, atol=1e-4, rtol=1e-4)
    assert a.patches.shape == (10, a.grid ** 2, a.dim) and a.patches.dtype == torch.float16
    assert not a.cls.requires_grad and all(p.grad is None for p in vit.parameters())


@pytest.mark.slow  # spawned worker processes
def test_parallel_decode_gives_the_same_eval_set(fast_cfg, records, tmp_path):
    """Large sites decode evaluation images in worker processes; views, geometry, split and skipped files
    (with their reasons) are the same as one process."""
    import dataclasses

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    recs = list(records[:8]) + [dataclasses.replace(records[0], path=bad)] + list(records[8:12])
    one = build_eval_set(recs, fast_cfg.model.img_size, seed=0, workers=1)
    two = build_eval_set(recs, fast_cfg.model.img_size, seed=0, workers=2)
    assert torch.equal(one.views, two.views) and len(one) == len(recs) - 1
    assert one.geometry == two.geometry and one.split == two.split
    assert [(r.path, why) for r, why in one.skipped] == [(r.path, why) for r, why in two.skipped] != []
