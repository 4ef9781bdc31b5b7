"""The ``xr0`` command: one sub-module per sub-command.

Each sub-command module exposes ``register(subparsers) -> None``, which adds its parser and sets
``func(args) -> int`` as default. Heavy imports (torch, flwr) happen inside ``func`` so ``xr0 --help``
stays fast. The entry point that assembles them is :mod:`simulation.cli` (the top layer), because
``xr0 simulate`` needs Flower and ``xr0_core`` must not import it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Iterable

CORE_COMMANDS = (
    "xr0_core.cli.site",
    "xr0_core.cli.synth",
    "xr0_core.cli.pretrain",
    "xr0_core.cli.evaluate",
    "xr0_core.cli.privacy",
    "xr0_core.cli.certs",
)


class CLIError(Exception):
    """A user-facing error: printed as ``xr0: error: <message>`` with exit code 2."""


def build_parser(modules: Iterable[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xr0",
        description="XR-0 Federated: hospitals jointly pretrain an X-ray foundation model on Flower.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # sub-command not built yet
                continue
            raise
        module.register(sub)
    return parser


def run(argv: list[str] | None, modules: Iterable[str]) -> int:
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
