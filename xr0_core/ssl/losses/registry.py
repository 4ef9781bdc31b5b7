"""The registry of SSL losses (one module per loss registers its class here on import)."""

from __future__ import annotations

from xr0_core.registry import Registry

LOSSES: Registry[type] = Registry("loss")
