"""The runbooks' commands, read from the Markdown itself so the deployment test runs exactly what the
runbooks tell people to type (docs/deploy-coordinator.md, docs/deploy-hospital.md).

A step is a fenced ``bash`` block right after a ``<!-- step: NAME -->`` line. Commands use only shell
variables (``$XR0_*``, ``$FLWR_HOME``) for site-specific values; the caller supplies them in the
environment.
"""

from __future__ import annotations

import re
from pathlib import Path

_STEP = re.compile(r"^<!-- step: ([\w-]+) -->\n```bash\n(.*?)\n```", re.M | re.S)


class RunbookError(ValueError):
    """A runbook step is missing or named twice."""


def steps(path: str | Path) -> dict[str, str]:
    """``{step name: command text}`` in document order."""
    text = Path(path).read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for name, body in _STEP.findall(text):
        if name in found:
            raise RunbookError(f"{path}: step {name!r} appears twice")
        found[name] = body
    return found


def step(path: str | Path, name: str) -> str:
    found = steps(path)
    if name not in found:
        raise RunbookError(f"{path}: no step {name!r} (have {', '.join(found) or 'none'})")
    return found[name]
