"""SiteTrainer: learning on tiny data, exact resume, what is shared, site state on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.data.dataset import ImageCache
from xr0_core.train.trainer import SiteTrainer

from tests.tiny import TINY



def _cache(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return ImageCache.from_arrays([rng.random((36, 40), dtype=np.float32) for _ in range(n)], 32)


def _trainer(**over):
    return SiteTrainer(from_flat({**TINY, **over}), [], site="h1", cache=_cache())


def test_same_seed_builds_same_initial_weights_everywhere():
    a, b = _trainer().shared_state_dict(), _trainer().shared_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = SiteTrainer(from_flat({**TINY, "seed": 1}), [], site="h1", cache=_cache()).shared_state_dict()
    assert not torch.equal(a["backbone.cls_token"], c["backbone.cls_token"])


@pytest.mark.parametrize("centering", ["ema", "frozen-per-round"])
def test_resume_from_saved_state_is_bitwise_identical(tmp_path, centering):
    over = {"ssl.centering": centering, "model.drop-path": 0.1}  # drop-path: seeded stochastic layers
    straight = _trainer(**over)
    straight.train(3, start_step=0, total_steps=6, commit_centers=False)
    straight.train(3, start_step=3, total_steps=6, commit_centers=False)

    first = _trainer(**over)
    first.train(3, start_step=0, total_steps=6, commit_centers=False)
    first.save_site_state(tmp_path / "site.safetensors")
    shared = first.shared_state_dict()
    resumed = _trainer(**over)
    resumed.load_shared_state_dict(shared)
    resumed.load_site_state(tmp_path / "site.safetensors")
    assert resumed.step == 3
    resumed.train(3, start_step=3, total_steps=6, commit_centers=False)

    a, b = straight.shared_state_dict(), resumed.shared_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.site_state_dict(), resumed.site_state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(k.startswith("optim.") for k in sa) and int(sa["step"]) == 6


def test_shared_state_holds_only_student_floats_and_site_state_holds_the_rest():
    tr = _trainer()
    tr.train(1, start_step=0, total_steps=4)
    shared, site = tr.shared_state_dict(), tr.site_state_dict()
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in shared.values())
    assert not any(k.startswith(("teacher", "optim", "dino_loss", "ibot_loss")) for k in shared)
    assert not set(shared) & set(site)
    assert {"step", "teacher_ready"} <= set(site)


def test_first_load_initialises_teacher_from_global_weights_later_loads_do_not():
    tr = _trainer()
    g = {k: v + 0.5 for k, v in tr.shared_state_dict().items()}
    tr.load_shared_state_dict(g)
    t = tr.model.teacher.state_dict()
    assert torch.equal(t["backbone.cls_token"], g["backbone.cls_token"])
    tr.train(1, start_step=0, total_steps=4)
    teacher_after = tr.model.teacher.state_dict()["backbone.cls_token"].clone()
    tr.load_shared_state_dict({k: v + 1.0 for k, v in g.items()})
    assert torch.equal(tr.model.teacher.state_dict()["backbone.cls_token"], teacher_after)


def test_train_metrics_and_callback():
    tr = _trainer()
    seen = []
    m = tr.train(2, start_step=5, total_steps=10, on_step=lambda s, mm: seen.append((s, mm["loss"])))
    assert [s for s, _ in seen] == [5, 6] and tr.step == 7
    assert {"loss", "loss-dino", "loss-ibot", "loss-first", "num-examples", "train-seconds", "lr"} <= set(m)
    assert m["loss-first"] == seen[0][1] and m["num-examples"] == 8
    assert np.isclose(m["loss"], np.mean([l for _, l in seen]))


def test_a_few_steps_on_one_repeated_batch_decrease_the_loss():
    """Overfit check: with one image and lr high enough the student matches its teacher better."""
    cfg = {"train.lr": 0.5, "train.warmup-frac": 0.0, "ssl.momentum-start": 0.9, "train.min-lr": 0.05}
    tr = SiteTrainer(from_flat({**TINY, **cfg}), [], site="h1", cache=_cache(n=1))
    losses = []
    tr.train(12, start_step=0, total_steps=12, on_step=lambda s, m: losses.append(m["loss"]))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_site_state_refuses_other_config(tmp_path):
    tr = _trainer()
    tr.save_site_state(tmp_path / "s.safetensors")
    other = SiteTrainer(from_flat({**TINY, "train.lr": 1e-3}), [], site="h1", cache=_cache())
    with pytest.raises(ValueError, match="another config"):
        other.load_site_state(tmp_path / "s.safetensors")
