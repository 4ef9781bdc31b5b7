"""The real dev set (``../shared/data/covid-chest-mhh``, CC BY 3.0, not in the repo): baselines on real pixels.

Cheap checks only (32-pixel views, no pretraining): the raw-pixel and random-init baselines of
``bench/real_probe.py`` run on real radiographs and find the easy label (projection AP / PA) far above
chance on the held-out patients, so the probe protocol itself is sound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEV_SET = Path("shared") / "data" / "covid-chest-mhh"


def dev_set() -> Path:
    """``<repo>/../shared/data/covid-chest-mhh``; from a git worktree, the one beside its main checkout."""
    candidates = [REPO.parent / DEV_SET]
    git = REPO / ".git"
    if git.is_file() and git.read_text().startswith("gitdir:"):
        gitdir = Path(git.read_text().split(":", 1)[1].strip())
        candidates.append(gitdir.parent.parent.parent.parent / DEV_SET)
    for c in candidates:
        if (c / "manifest.csv").is_file():
            return c
    pytest.fail(f"dev set not found at {candidates[0]} (CI and checkouts keep it at ../shared/data/covid-chest-mhh)")


@pytest.fixture(scope="module")
def eval_set():
    from xr0_core.data.index import index_site
    from xr0_core.eval.tasks.base import build_eval_set

    records = index_site(dev_set(), verify_pixels=False).records
    return build_eval_set(records, 32, seed=0)


def test_dev_set_has_patient_level_splits(eval_set):
    split = {}
    for r in eval_set.records:
        split.setdefault(r.patient_id, set()).add(r.split)
    assert len(eval_set) == 243 and all(len(s) == 1 for s in split.values())


def test_pixel_and_random_baselines_find_the_projection(eval_set):
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from real_probe import probe_scores

    from xr0_core.config import from_flat
    from xr0_core.eval.baseline import pixel_features, random_init_backbone
    from xr0_core.eval.metrics import binary_auroc
    from xr0_core.eval.tasks.base import extract

    y = np.array([r.labels["projection"] for r in eval_set.records])
    split = ["test" if r.split == "test" else "train" for r in eval_set.records]
    groups = [r.patient_id for r in eval_set.records]
    cfg = from_flat({"model.backbone": "vit-micro-p8", "model.img-size": 32, "ssl.local-size": 16,
                     "train.load-size": 32, "train.device": "cpu"})
    for x in (pixel_features(eval_set).cls.numpy(), extract(random_init_backbone(cfg), eval_set, patches=False).cls.numpy()):
        scores, rows = probe_scores(x, y, split, groups, "test", seed=0)
        assert set(np.array(split)[rows]) == {"test"}
        assert binary_auroc(scores, y[rows]) > 0.8


def test_cv_protocol_and_chance_band(eval_set):
    """The cv protocol (repeated, label-stratified group folds inside the train split) finds the easy label, and
    the permutation chance band sits around 0.5, far below it: the band measures luck, not the features."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from real_probe import permutation_null, probe_scores

    from xr0_core.eval.baseline import pixel_features
    from xr0_core.eval.metrics import binary_auroc

    y = np.array([r.labels["projection"] for r in eval_set.records])
    split = ["test" if r.split == "test" else "train" for r in eval_set.records]
    groups = [r.patient_id for r in eval_set.records]
    x = pixel_features(eval_set).cls.numpy()
    scores, rows = probe_scores(x, y, split, groups, "cv", seed=0, repeats=2)
    assert set(np.array(split)[rows]) == {"train"} and len(rows) == split.count("train")
    assert binary_auroc(scores, y[rows]) > 0.8
    band = permutation_null(x, y, split, groups, "test", seed=0, n=12)
    assert 0.3 < band.mean() < 0.7, band
    test_scores, test_rows = probe_scores(x, y, split, groups, "test", seed=0)
    assert np.quantile(band, 0.95) < 0.9 < binary_auroc(test_scores, y[test_rows])


def test_same_patient_top1_counts_nearest_neighbour_of_the_same_patient():
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from real_reid import same_patient_top1

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    patients = np.array(["a", "a", "b", "b", "c", "c"])
    x = np.repeat(centres, 2, axis=0) + 0.01 * rng.normal(size=(6, 16))
    assert same_patient_top1(x, patients).tolist() == [1.0] * 6
    x[1] = centres[1] + 0.01  # image 1 now looks like patient b: it and its former twin miss
    hits = same_patient_top1(x, patients)
    assert hits[1] == 0.0 and hits[2:].tolist() == [1.0] * 4
