"""Per-unit DP-SGD: clipping per patient over all views, the two gradient routes, batch-coupled refusals."""

from __future__ import annotations

import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.data.dataset import BatchMaker
from xr0_core.privacy import dp
from xr0_core.privacy.units import PoissonUnitSampler, privacy_units
from xr0_core.site.round import site_trainer
from xr0_core.ssl.schedules import Schedules
from xr0_core.train import per_unit
from xr0_core.train.loop import trainable_parameters

from tests.privacy.dpdata import dp_cfg, patient_cache


def _batch(trainer, idx):
    maker = BatchMaker(trainer.cache, trainer.cfg, site="h", patch_size=trainer.model.patch_size)
    b = maker.build(0, torch.tensor(idx))
    b.pop("index")
    return b


def test_units_group_images_of_a_patient_and_fall_back_to_images():
    units = privacy_units(patient_cache([0, 0, 0, 1, 2, 2]).kept)
    assert units.kind == "patient" and units.n_units == 3
    assert [m.tolist() for m in units.members] == [[0, 1, 2], [3], [4, 5]]
    plain = privacy_units([0, 1, 2])  # ImageCache.from_arrays records: no patient ids
    assert plain.kind == "image" and plain.n_units == 3


def test_poisson_sampler_takes_whole_units_and_caps_images():
    units = privacy_units(patient_cache([0] * 10 + [1, 2]).kept)
    s = PoissonUnitSampler(units, 1.0, images_per_unit=3, seed=0)
    images, slots = s.draw()
    assert slots.max() == 2  # all three units at q = 1
    assert int((slots == 0).sum()) == 3  # the 10-image patient gives at most 3 images
    assert set(units.image_unit[images].tolist()) == {0, 1, 2}


def test_vmap_route_matches_microbatch_route_and_forward_loss():
    cfg = dp_cfg()
    tr = site_trainer(cfg, [], site="h", cache=patient_cache([0, 0, 1, 2, 2]))
    tr.model.reset_teacher_from_student()
    batch = _batch(tr, [0, 1, 2, 3, 4])
    slot = torch.tensor([0, 0, 1, 2, 2])
    gv, lv = per_unit.per_unit_grads_vmap(tr.model, batch, slot, 3, 0.05)
    gm, lm = per_unit.per_unit_grads_microbatch(tr.model, batch, slot, 3, 0.05)
    per_image = tr.model(batch, 0.05).loss.detach()
    assert torch.allclose(lv, torch.stack([per_image[:2].mean(), per_image[2], per_image[3:].mean()]), atol=1e-5)
    assert torch.allclose(lv, lm, atol=1e-5)
    for k in gv:
        assert gv[k].shape == (3, *dict(tr.model.named_parameters()).get(f"student.{k}", tr.model.mask_token).shape)
        assert torch.allclose(gv[k], gm[k], atol=1e-4, rtol=1e-3), k


@pytest.mark.parametrize("mode", ["vmap", "microbatch"])
def test_clipping_is_per_patient_over_all_views(mode):
    """Noise 0, tiny C: the step's summed gradient is the sum of per-unit clipped gradients, each of norm <= C,
    and a patient with many images counts once (one clipped unit)."""
    c = 1e-3
    cfg = dp_cfg(**{"privacy.max-grad-norm": c, "privacy.grad-sample-mode": mode, "privacy.images-per-unit": 6})
    tr = site_trainer(cfg, [], site="h", cache=patient_cache([0, 0, 0, 0, 0, 0, 1, 2]))
    tr.model.reset_teacher_from_student()
    step = dp.dp_step(tr, noise_multiplier=0.0, sample_rate=1.0, seed=0)
    params = trainable_parameters(tr.model)
    seen = {}

    def capture(optim):  # Opacus step hook: after clip + (zero) noise + scaling
        seen["grad"] = {k: p.grad.detach().clone() for k, p in params.items()}
        seen["norms"] = torch.stack([p.grad_sample.reshape(len(p.grad_sample), -1).norm(dim=1)
                                     for p in params.values()], dim=1).norm(dim=1)

    step.optimizer.attach_step_hook(capture)
    step(tr, None, Schedules.build(cfg, 4), 0, rng_seed=0, sync=True)
    assert seen["norms"].numel() == 3  # 8 images, 3 patients -> 3 per-unit gradients
    assert (seen["norms"] > c).all()  # unclipped unit gradients are far above C ...
    total = torch.sqrt(sum(g.double().pow(2).sum() for g in seen["grad"].values()))
    # ... and the released sum, times the expected batch size q * n = 3, is a sum of 3 vectors of norm <= C.
    assert float(total) * 3 <= 3 * c * (1 + 1e-4)


def test_dp_training_changes_weights_and_respects_noise(cache12):
    cfg = dp_cfg()
    tr = site_trainer(cfg, [], site="h", cache=cache12)
    before = tr.shared_state_dict()
    step = tr.use_stepper(dp.dp_step(tr, noise_multiplier=1.0, seed=1))
    m = tr.train(2, start_step=0, total_steps=4)
    after = tr.shared_state_dict()
    assert step.steps == 2 and m["num-examples"] == 12
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_koleo_is_refused_with_the_term_and_alternative(cache12):
    with pytest.raises(dp.BatchCoupledLossError, match=r"KoLeo.*ssl\.koleo-weight = 0"):
        site_trainer(dp_cfg(**{"ssl.koleo-weight": 0.3}), [], site="h", cache=cache12)


def test_explicit_batch_coupled_centering_is_refused(cache12):
    # A batch-coupled mode chosen explicitly (i.e. not the preset's default) is refused, not swapped.
    chosen = "sinkhorn" if from_flat({"preset": "cpu-tiny"}).ssl.centering != "sinkhorn" else "ema"
    term = {"sinkhorn": "Sinkhorn-Knopp", "ema": "EMA center updated from raw private batches"}[chosen]
    with pytest.raises(dp.BatchCoupledLossError, match=rf"{chosen}.*{term}.*frozen-per-round"):
        site_trainer(dp_cfg(**{"ssl.centering": chosen}), [], site="h", cache=cache12)


def test_preset_default_centering_is_swapped_for_per_sample_targets(cache12):
    cfg = dp_cfg()
    assert cfg.ssl.koleo_weight > 0  # the cpu-tiny preset has KoLeo on
    tr = site_trainer(cfg, [], site="h", cache=cache12)
    assert tr.model.coupling == "per-sample" and tr.model.centering == dp.DP_CENTERING
    assert dp.dp_objective_config(cfg).ssl.koleo_weight == 0.0  # the preset's KoLeo is dropped, not refused
    assert tr.cfg.hash() == cfg.hash()  # server and sites still agree on the config
