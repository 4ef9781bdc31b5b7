"""The random-init and raw-pixel baselines (xr0_core/eval/baseline.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr0_core.eval.baseline import (
    paired_bootstrap_auroc_ci,
    pixel_applicable,
    pixel_vectors,
    random_init_backbone,
)


def test_random_init_is_the_round0_student_backbone(fast_cfg):
    from xr0_core.train.state import build_model

    a = random_init_backbone(fast_cfg).state_dict()
    b = build_model(fast_cfg).student["backbone"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pixel_vectors_flatten_the_normalised_view():
    views = torch.rand(3, 1, 8, 8)
    x = pixel_vectors(views)
    assert x.shape == (3, 64)
    assert not torch.equal(x, views.flatten(1))  # normalised as the backbone input
    with pytest.raises(ValueError):
        pixel_vectors(torch.rand(3, 8, 8))


def test_pixel_baseline_applies_to_vector_tasks_only():
    assert pixel_applicable("classification/label_sex")
    assert pixel_applicable("retrieval/image-image/anatomy")
    assert not pixel_applicable("segmentation/mask")
    assert not pixel_applicable("retrieval/image-report")


def test_auroc_difference_interval_excludes_zero_only_for_a_real_gap():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 60)
    good = y + rng.normal(0, 0.3, len(y))
    noise = rng.normal(0, 1, len(y))
    groups = np.repeat(np.arange(40), 3)
    lo, hi = paired_bootstrap_auroc_ci(good, noise, y, groups, n_resamples=300)
    assert lo > 0.2
    lo, hi = paired_bootstrap_auroc_ci(good, good, y, groups, n_resamples=100)
    assert lo == hi == 0.0


def test_suite_reports_the_pixel_baseline(fast_cfg, records):
    from xr0_core.eval.suite import evaluate_backbone

    result = evaluate_backbone(fast_cfg, records, None, tasks="classification,retrieval", device="cpu")
    body = result.to_json()
    assert body["baseline_pixels"], "no raw-pixel baseline in the evaluate JSON"
    assert set(body["baseline_pixels"]) <= set(body["baseline_random"])
    assert all(pixel_applicable(t) for t in body["baseline_pixels"])
    flat = result.flat_metrics()
    assert any("/pixels/" in k for k in flat)
