"""The DP-across-ranks setup shared by tests/privacy/test_dp_ranks.py and its torchrun worker: one site's
patients, q, sigma and steps, the seed whose draws cover the cases, and the gradient the first step applies."""

from __future__ import annotations

import torch

from xr0_core.privacy.units import PoissonUnitSampler, privacy_units

from tests.privacy.dpdata import dp_cfg, patient_cache

PATIENTS = [0, 0, 1, 2, 3, 3, 4, 5]  # 8 images, 6 units (two patients with two images)
Q, SIGMA, STEPS = 0.4, 0.5, 4
TINY_C = 1e-4  # the clipped sum (<= U C) is negligible next to the noise (sigma C sqrt(#params))
# The ranks' per-unit gradients come from smaller vmap batches (other float summation order); three AdamW
# steps amplify that rounding a little.
ATOL, RTOL = 2e-5, 1e-4


def config(**over):
    return dp_cfg(**{"privacy.images-per-unit": 2, **over})


def unit_counts(seed: int) -> list[int]:
    """Units sampled at each of the STEPS steps by the sampler a DP step seeded with ``seed`` uses."""
    s = PoissonUnitSampler(privacy_units(patient_cache(PATIENTS).kept), Q, 2, seed=seed)
    return [int(slots.max()) + 1 if slots.numel() else 0 for slots in (s.draw()[1] for _ in range(STEPS))]


def chosen_seed() -> int:
    """First seed whose draws include an odd number of units (unequal shares) and a step with at most one unit
    (a rank with an empty share) and a step with >= 3 units: the cases the test claims to cover."""
    for seed in range(1000):
        c = unit_counts(seed)
        if any(u % 2 for u in c) and min(c) <= 1 and max(c) >= 3:
            return seed
    raise AssertionError("no seed covers the cases")


def capture_grads(trainer) -> dict[str, torch.Tensor]:
    """Filled with the gradient the first optimizer step applies (after clip, noise, all-reduce, scaling)."""
    from xr0_core.train.loop import trainable_parameters

    params = trainable_parameters(trainer.model)
    seen: dict[str, torch.Tensor] = {}

    def hook(optimizer, args, kwargs):
        if not seen:
            seen.update({k: p.grad.detach().clone().contiguous() for k, p in params.items()})

    trainer.optimizer.register_step_pre_hook(hook)
    return seen
