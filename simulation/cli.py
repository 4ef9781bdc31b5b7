"""Entry point of the ``xr0`` console script: core sub-commands plus ``simulate``."""

from __future__ import annotations

import sys

from xr0_core.cli import CORE_COMMANDS, run

COMMANDS = CORE_COMMANDS + ("simulation.simulate_cmd", "server.deploy_cmd")


def main(argv: list[str] | None = None) -> int:
    return run(argv, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
