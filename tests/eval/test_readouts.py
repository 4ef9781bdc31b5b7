"""Readouts (what the linear probe reads) and the probe's C chosen by CV by patient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr0_core.eval.linear_probe import FIXED_C, choose_c, probe
from xr0_core.eval.readouts import check_readout, pool_patches, readout, readout_dim


def test_grid_readout_is_the_mean_of_each_block_in_raster_order():
    g, d = 4, 3
    patches = torch.arange(g * g * d, dtype=torch.float32).reshape(1, g * g, d)
    cls = torch.full((1, d), -1.0)
    out = readout(cls, patches, "cls+grid2")
    assert out.shape == (1, readout_dim("cls+grid2", d)) == (1, 5 * d)
    assert torch.equal(out[0, :d], cls[0])
    grid = patches[0].reshape(g, g, d)
    expected = [grid[r:r + 2, c:c + 2].reshape(-1, d).mean(0) for r in (0, 2) for c in (0, 2)]
    assert torch.allclose(out[0, d:], torch.cat(expected))
    assert torch.allclose(readout(cls, patches, "cls+mean")[0, d:], patches[0].mean(0))
    assert torch.equal(readout(cls, patches, "cls"), cls)


def test_bad_readouts_say_what_to_use():
    with pytest.raises(ValueError, match="cls\\+grid<k>"):
        check_readout("grid4")
    with pytest.raises(ValueError, match="at least 8 patches per side"):
        pool_patches(torch.zeros(1, 16, 2), "cls+grid8")


def test_spatial_readout_reads_a_local_signal_the_cls_token_misses():
    """A label carried by one corner's patches: the grid readout separates it, CLS (noise here) cannot."""
    rng = np.random.default_rng(0)
    n, g, d = 240, 4, 8
    y = rng.integers(0, 2, n)
    patches = rng.normal(size=(n, g * g, d)).astype(np.float32)
    patches[:, 0, 0] += 2.5 * y  # the top-left patch only
    cls = rng.normal(size=(n, d)).astype(np.float32)
    groups = [str(i // 2) for i in range(n)]
    tr, te = np.arange(160), np.arange(160, n)
    aucs = {}
    from xr0_core.eval.metrics import binary_auroc

    for name in ("cls", "cls+grid4"):
        x = readout(torch.from_numpy(cls), torch.from_numpy(patches), name).numpy()
        p, _ = probe(x[tr], y[tr], x[te], 2, 0, groups=[groups[i] for i in tr])
        aucs[name] = binary_auroc(p[:, 1], y[te])
    assert aucs["cls+grid4"] > 0.8 and aucs["cls"] < 0.65, aucs


def test_chosen_c_beats_the_fixed_c_on_many_noisy_features():
    """600 features each carrying a little of the label under much noise (raw pixels are like that): the fixed
    C = 0.5 overfits; the C chosen by CV on the training rows is smaller and scores better on held-out rows."""
    from xr0_core.eval.linear_probe import fit_predict
    from xr0_core.eval.metrics import binary_auroc

    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 2, n)
    x = y[:, None] * 0.1 + rng.normal(size=(n, 600))
    tr, te = np.arange(250), np.arange(250, n)
    groups = [str(i) for i in tr]
    c = choose_c(x[tr], y[tr], groups, 2, 0)
    assert c <= 1e-3
    chosen = binary_auroc(fit_predict(x[tr], y[tr], x[te], 2, 0, c)[:, 1], y[te])
    fixed = binary_auroc(fit_predict(x[tr], y[tr], x[te], 2, 0, FIXED_C)[:, 1], y[te])
    assert chosen > fixed + 0.01, (c, chosen, fixed)


def test_choose_c_falls_back_to_the_fixed_c_without_enough_patients():
    x = np.random.default_rng(0).normal(size=(8, 3))
    y = np.array([0, 1] * 4)
    assert choose_c(x, y, ["a", "a", "b", "b", "c", "c", "d", "d"], 2, 0) == FIXED_C


@pytest.mark.parametrize("classes", [2, 4])
def test_the_torch_probe_solves_scikit_learns_objective(classes):
    """The same L2 logistic regression as ``sklearn.linear_model.LogisticRegression(C)`` on standardised
    features (one-vs-rest for more classes): the same class probabilities; a class absent from training gets 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from xr0_core.eval.linear_probe import fit_predict

    rng = np.random.default_rng(classes)
    n, d = 300, 20
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + 0.7 * y[:, None] * rng.normal(size=d)
    x[:, 3] = 5.0  # a constant feature
    tr, te = np.arange(200), np.arange(200, n)
    for c in (0.01, 0.5):
        ours = fit_predict(x[tr], y[tr], x[te], classes + 1, 0, c)  # one class never seen
        scaler = StandardScaler().fit(x[tr])
        lr = LogisticRegression(C=c, max_iter=5000, tol=1e-10)
        ref = (lr if classes == 2 else OneVsRestClassifier(lr)).fit(scaler.transform(x[tr]), y[tr])
        expected = ref.predict_proba(scaler.transform(x[te]))
        assert np.abs(ours[:, :classes] - expected).max() < 1e-3, c
        assert np.all(ours[:, classes] == 0)
