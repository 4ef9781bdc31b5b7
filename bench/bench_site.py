"""A trainer on random images for step-time benches (``bench/gpu.py``, ``bench/dp_overhead.py``).

Both time one training step of a preset, plain or under DP, on the same model work; this is the one place
that builds it, so the two benches measure the same thing.
"""

from __future__ import annotations

from typing import Any


def random_image_trainer(overrides: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(trainer, batch_maker, index)`` for a batch of ``train.batch-size`` random images.

    ``overrides``: flat config keys (preset, device, privacy...). The objective is per-sample
    (frozen-per-round centering, no KoLeo) in every mode, so plain and DP runs do the same model work.
    ``index``: ``[B]`` the images of the one batch, ``arange(B)``.
    """
    import numpy as np
    import torch

    from xr0_core.config import from_flat
    from xr0_core.data.dataset import ImageCache
    from xr0_core.site.round import site_trainer

    cfg = from_flat({"ssl.centering": "frozen-per-round", "ssl.koleo-weight": 0.0, **overrides})
    b, side = cfg.train.batch_size, cfg.train.load_size
    rng = np.random.default_rng(0)
    cache = ImageCache.from_arrays([rng.random((side, side), dtype=np.float32) for _ in range(b)], side)
    trainer = site_trainer(cfg, [], site="bench", cache=cache)  # with privacy.enabled: the DP objective
    trainer.model.reset_teacher_from_student()
    return trainer, trainer.batch_maker(), torch.arange(b)  # the maker the DP step builds its views with
