"""The ``xr0`` command: every sub-command, registered here with plain imports (the console script's entry).

The sub-commands live where their code belongs: the framework-free ones in :mod:`xr0_core.cli` (site, synth,
pretrain, evaluate, privacy, certs; :data:`xr0_core.cli.commands.CORE_COMMANDS`), the site commands that need
Flower (``site app-version``, ``site clientapp``) in :mod:`client.site_cmd`, ``site supernode`` and the
admission check of ``site doctor`` in :mod:`client.supernode_cmd`, ``simulate`` in
:mod:`simulation.simulate_cmd` and ``coordinator`` in :mod:`server.deploy_cmd` (all import Flower, which
``xr0_core`` never does). This package is the top layer: it imports all of them, nothing imports it. Each module
exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``; heavy imports (torch)
happen inside ``func``, so ``xr0 --help`` stays quick.
"""

from __future__ import annotations

from client import site_cmd, supernode_cmd
from server import deploy_cmd
from simulation import simulate_cmd
from xr0_core.cli import run
from xr0_core.cli.commands import CORE_COMMANDS

COMMANDS = (*CORE_COMMANDS, site_cmd, supernode_cmd, simulate_cmd, deploy_cmd)


def main(argv: list[str] | None = None) -> int:
    """``xr0 ARGS``: parse, run the sub-command, return its exit code (2 for a usage error)."""
    return run(argv, COMMANDS)
