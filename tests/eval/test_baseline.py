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
    from xr0_core.ssl.factory import build_model

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


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_suite_reports_the_pixel_baseline(fast_cfg, records):
    from xr0_core.eval.suite import evaluate_backbone

    result = evaluate_backbone(fast_cfg, records, None, tasks="classification,retrieval", device="cpu")
    body = result.to_json()
    assert body["baseline_pixels"], "no raw-pixel baseline in the evaluate JSON"
    assert set(body["baseline_pixels"]) <= set(body["baseline_random"])
    assert all(pixel_applicable(t) for t in body["baseline_pixels"])
    flat = result.flat_metrics()
    assert any("/pixels/" in k for k in flat)


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_suite_intervals_against_pixels_are_the_paired_difference(fast_cfg, records):
    """Every difference carries its interval: pretrained minus raw pixels as well as minus random init, on the
    same per-patient units, and both leave as flat scalar keys."""
    import dataclasses

    from xr0_core.eval.baseline import random_init_backbone
    from xr0_core.eval.suite import evaluate_models

    other = dataclasses.replace(fast_cfg, seed=fast_cfg.seed + 7)  # another random init plays "pretrained"
    result = evaluate_models(fast_cfg, records, lambda: random_init_backbone(other),
                             lambda: random_init_backbone(fast_cfg), tasks="classification", device="cpu")
    assert result.intervals_pixels, "no interval against the raw-pixel baseline"
    assert set(result.intervals_pixels) <= set(result.baseline_pixels)
    for task, ci in result.intervals_pixels.items():
        metric = ci["metric"]  # the per-unit metric (linear accuracy): its mean difference is the point estimate
        assert ci["diff"] == pytest.approx(result.tasks[task][metric] - result.baseline_pixels[task][metric])
        assert ci["low"] <= ci["diff"] <= ci["high"]
        flat = result.flat_metrics()
        assert flat[f"{task}/ci-pixels/{metric}/diff"] == pytest.approx(ci["diff"])
        assert f"{task}/ci/{metric}/diff" in flat  # the random-init interval is still there
    assert "intervals_pixels" in result.to_json()
