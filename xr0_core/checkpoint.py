"""Checkpoint files, the one home for how weights and state go to disk and come back (D9; STYLE 13).

Three writers use it, each with its own layout:

- the coordinator (``server/checkpoint.py``): one folder per completed round (:func:`xr0_core.atomic.atomic_folder`
  with :func:`save_tensors` inside) and a ``latest.json`` pointer, older rounds pruned (:func:`prune`);
- a site's round state (:mod:`xr0_core.train.round_state`, :meth:`SiteTrainer.save_site_state`):
  ``round-NNNNN.safetensors`` files, the newest before a round found with :func:`numbered_files`;
- ``xr0 pretrain``: ``checkpoint.safetensors`` + ``site_state.safetensors`` in its output folder.

Tensors are safetensors (no pickle); facts about them (format, step, config hash) are JSON under the header key
``"xr0"`` (:data:`META_KEY`), read back without loading the tensors (:func:`read_meta`). Every write is atomic.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from xr0_core.atomic import atomic_write

META_KEY = "xr0"


def save_tensors(path: Path | str, tensors: Mapping[str, Any], meta: Mapping[str, Any] | None = None, *,
                 header: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (torch tensors or numpy arrays, by name) as safetensors, atomically.

    Parameters
    ----------
    meta : JSON-able mapping, optional
        Stored as JSON under the header key :data:`META_KEY`; :func:`read_meta` returns it.
    header : str -> str, optional
        Extra raw header entries (formats that predate :data:`META_KEY`, e.g. the coordinator's ``round``).
    """
    metadata = dict(header or {})
    if meta is not None:
        metadata[META_KEY] = json.dumps(dict(meta), sort_keys=True)
    values = list(tensors.values())
    if values and all(hasattr(v, "numpy") and hasattr(v, "contiguous") for v in values):  # torch
        from safetensors.torch import save_file

        data: dict[str, Any] = {k: v.detach().contiguous() for k, v in tensors.items()}
    else:
        import numpy as np
        from safetensors.numpy import save_file

        data = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return atomic_write(Path(path), lambda tmp: save_file(data, str(tmp), metadata=metadata or None))


def read_meta(path: Path | str) -> dict[str, Any]:
    """The :data:`META_KEY` JSON of a file written by :func:`save_tensors` (``{}`` when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return json.loads((f.metadata() or {}).get(META_KEY, "{}"))


def read_header(path: Path | str) -> dict[str, str]:
    """All raw header entries of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return dict(f.metadata() or {})


def load_tensors(path: Path | str, *, framework: str = "pt") -> dict[str, Any]:
    """The tensors of a safetensors file: torch tensors (``"pt"``) or numpy arrays (``"np"``)."""
    if framework == "np":
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    return load_file(str(path))


def numbered_files(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """``(number, path)`` of the entries of ``folder`` whose name matches ``pattern`` (one group: the number),
    ascending; ``[]`` when the folder does not exist."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return sorted(found)


def latest_before(folder: Path, pattern: re.Pattern[str], limit: int) -> Path | None:
    """The entry with the largest number below ``limit`` (None: none yet)."""
    earlier = [p for n, p in numbered_files(folder, pattern) if n < limit]
    return earlier[-1] if earlier else None


def prune(folder: Path, pattern: re.Pattern[str], keep: int) -> list[Path]:
    """Remove all but the ``keep`` highest-numbered entries (files or folders) matching ``pattern``; returns what
    was removed."""
    entries = numbered_files(folder, pattern)
    removed = [p for _, p in entries[:-keep]] if keep > 0 else [p for _, p in entries]
    for p in removed:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed
