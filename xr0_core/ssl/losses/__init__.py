"""SSL losses, one per file, each an ``nn.Module`` returning per-sample losses ``[B]`` (STYLE 1, 2).

Every loss class declares ``coupling = "per-sample" | "batch"``; ``tests/ssl/test_losses.py`` checks the
claim for every entry of :data:`LOSSES` (a per-sample loss of sample i in a batch equals its loss alone; a
batch loss of sample i changes when another sample changes).
"""

from __future__ import annotations

from xr0_core.registry import Registry
from xr0_core.ssl.losses.registry import LOSSES

__all__ = ["LOSSES", "load_all"]


def load_all() -> Registry[type]:
    """Import the loss modules (registration happens on import) and return :data:`LOSSES`."""
    from xr0_core.ssl.losses import caption, clip, dino, ibot, koleo, siglip  # noqa: F401

    return LOSSES
