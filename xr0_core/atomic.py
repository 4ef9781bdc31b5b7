"""Crash-safe writes of files and folders: write a temporary sibling, fsync, rename over the target (POSIX
atomic), fsync the parent folder. A reader sees the old version or the complete new one, never a torn write.

- :func:`atomic_write` / :func:`atomic_write_json`: one file;
- :func:`atomic_folder`: a whole folder (a checkpoint round: several files that only make sense together);
- :func:`fsync_dir`: make a rename in a folder durable (what the two above do last).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def fsync_dir(path: Path | str) -> None:
    """fsync a folder, so the renames and new entries in it survive a power loss (a no-op where the platform
    cannot open folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically move ``tmp_path`` to ``path``.

    A reader sees either the old file or the complete new one, never a torn write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """``obj`` as indented, key-sorted JSON, written atomically."""
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str)))


def atomic_folder(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)`` on a fresh temporary sibling folder, fsync every file it wrote, then put it at
    ``path`` in one rename (an existing folder there is moved aside first and removed after).

    A crash leaves ``path`` either absent, the old folder or the complete new one, plus at most a hidden
    temporary sibling (``.<name>.*.tmp``) that no reader looks at.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    aside: Path | None = None
    try:
        write(tmp)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync_file(f)
        fsync_dir(tmp)
        if path.exists():  # a folder cannot be renamed over a non-empty one: move the old one aside first
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, aside / path.name)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return path
