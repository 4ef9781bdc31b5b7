"""The framework-free sub-commands of ``xr0`` (one module each) and the helpers they share.

Each sub-command module exposes ``register(subparsers) -> None``, which adds its parser and sets
``func(args) -> int`` as default. Heavy imports (torch) happen inside ``func`` so ``xr0 --help`` stays fast.
:data:`xr0_core.cli.commands.CORE_COMMANDS` lists them; the ``xr0`` entry point (the top-level :mod:`cli`
package) registers those plus ``simulate`` and ``coordinator``, which need Flower (``xr0_core`` never imports it).
"""

from __future__ import annotations

import argparse
import json
import sys
from types import ModuleType
from typing import Any, Iterable


class CLIError(Exception):
    """A user-facing error: printed as ``xr0: error: <message>`` with exit code 2."""


def build_parser(modules: Iterable[ModuleType]) -> argparse.ArgumentParser:
    """The ``xr0`` parser with the sub-commands of ``modules`` (each has ``register(subparsers)``)."""
    parser = argparse.ArgumentParser(
        prog="xr0",
        description="XR-0 Federated: hospitals jointly pretrain an X-ray foundation model on Flower.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in modules:
        module.register(sub)
    return parser


def run(argv: list[str] | None, modules: Iterable[ModuleType]) -> int:
    """Parse ``argv`` with the sub-commands of ``modules`` and run the chosen one (2 on a usage error)."""
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"xr0: error: {exc}", file=sys.stderr)
        return 2


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` flags as a flat config mapping (values stay strings; the config coerces them)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def print_json(obj: Any) -> None:
    """One JSON object on stdout (the ``--json`` contract); everything else goes to stderr."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
