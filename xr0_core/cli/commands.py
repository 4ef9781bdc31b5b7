"""The framework-free sub-commands of ``xr0``, in ``xr0 --help`` order (the entry point adds the Flower ones)."""

from __future__ import annotations

from xr0_core.cli import audit, certs, dashboard, evaluate, pretrain, privacy, site, synth

CORE_COMMANDS = (site, synth, pretrain, evaluate, privacy, audit, dashboard, certs)
