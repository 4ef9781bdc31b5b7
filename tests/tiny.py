"""The one tiny configuration CPU tests train: a 2-block, 64-wide ViT on 32 px images (a step takes well under a
second on 2 cores). Tests change what they need with overrides; worker scripts (torchrun, subprocesses) import
these functions, test functions take the ``tiny_cfg`` fixture (tests/conftest.py)."""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = {
    "model.backbone": "vit-micro-p8", "model.img-size": 32, "ssl.local-size": 16, "train.load-size": 32,
    "ssl.n-local-crops": 2, "train.batch-size": 4, "model.head-out-dim": 64, "model.ibot-out-dim": 64,
    "model.head-hidden-dim": 64, "model.head-bottleneck-dim": 32, "train.device": "cpu",
}
# 16 px images (a 2x2 patch grid): for tests that run many processes or many steps.
SMALLER = {"model.img-size": 16, "ssl.local-size": 8, "train.load-size": 16}
# The per-sample objective (frozen centers, no KoLeo, no drop-path): what DP and data parallelism reproduce exactly.
PER_SAMPLE = {"ssl.centering": "frozen-per-round", "ssl.koleo-weight": 0.0, "model.drop-path": 0.0}


def tiny_flat(**over: Any) -> dict[str, Any]:
    """:data:`TINY` with ``over`` (flat keys, e.g. ``**{"train.batch-size": 8}``)."""
    return {**TINY, **over}


def tiny_cfg(**over: Any):
    """The :class:`~xr0_core.config.XR0Config` of :func:`tiny_flat`."""
    from xr0_core.config import from_flat

    return from_flat(tiny_flat(**over))


def tiny_set_args(**over: Any) -> list[str]:
    """:func:`tiny_flat` as ``--set KEY=VALUE`` arguments of an ``xr0`` command."""
    return [a for k, v in tiny_flat(**over).items() for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
