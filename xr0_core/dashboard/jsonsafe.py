"""Small helpers every view shares: JSON a browser can parse, and cheap "did this file change?" checks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively (browsers' ``JSON.parse`` rejects
    ``NaN`` and ``Infinity``, which Python's ``json`` writes)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(state: Any) -> str:
    """Compact JSON of ``state`` for the browser (non-finite numbers as null)."""
    return json.dumps(finite(state), separators=(",", ":"), sort_keys=True, default=str, allow_nan=False)


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """``(inode, size, mtime_ns)`` of ``path``, None when it does not exist: changes when the file is
    rewritten (atomic replace: new inode) or appended to."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_json(path: Path) -> Any:
    """The JSON in ``path``; None when it is missing or unreadable (a writer replaces files atomically, so an
    unreadable file is damaged, not half-written; the view says the file is missing rather than failing)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
