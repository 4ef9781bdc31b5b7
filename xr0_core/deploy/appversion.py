"""What "app version" means for a hospital's allow-list (site policy ``apps.allowed-versions``).

An app version is ``<project version>+<digest>``, e.g. ``0.1.0+3f9c2a61d0b4e7aa``: the ``[project].version``
of pyproject.toml and the first 16 hex digits of a SHA-256 over the Python source of the packages the app is
made of (:data:`PACKAGES`: every ``*.py`` file under them, as (relative path, bytes), in sorted order).

It is computed from the files the running process actually imported the app from, so in deployment it
names the code Flower unpacked from the submitted bundle (FAB), not the site's own checkout; a hospital
reviews a checkout, runs ``xr0 site app-version`` (or reads the coordinator's release note) and adds the
string to its policy.

Why not Flower's own identifiers (checked against flwr 1.42):

- The FAB hash never reaches the ClientApp (``Context`` has run/node ids and configs only); the SuperNode
  does not expose it to the app. It also covers non-code files (README, docs, the run-config defaults in
  pyproject.toml), so a typo fix in a doc would void every site's approval.
- Signed apps (``flower-supernode --trusted-entities``) verify signatures made by Flower's hosted app
  platform (``flwr app publish``); a coordinator cannot sign a bundle itself offline, so a private
  federation cannot use it end to end.
- The run config is already pinned separately: the coordinator's config hash must match the site's.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import tomllib
from pathlib import Path

PACKAGES = ("xr0_core", "client", "server", "strategies", "simulation")
DIGEST_CHARS = 16


def source_digest(root: str | Path, packages: tuple[str, ...] = PACKAGES) -> str:
    """SHA-256 (hex) over every ``*.py`` file below ``root/<package>`` (paths relative to ``root``)."""
    root = Path(root)
    h = hashlib.sha256()
    files = sorted(p for pkg in packages if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")
                   if "__pycache__" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no app source under {root} (expected {', '.join(packages)})")
    for path in files:
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def project_version(root: str | Path) -> str:
    """``[project].version`` of ``root/pyproject.toml``, else the installed distribution's version."""
    pyproject = Path(root) / "pyproject.toml"
    if pyproject.is_file():
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (KeyError, tomllib.TOMLDecodeError):
            pass
    try:
        return importlib.metadata.version("xr0-federated")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def app_version_of(root: str | Path) -> str:
    """The app version of the source tree at ``root`` (a checkout or an unpacked FAB)."""
    return f"{project_version(root)}+{source_digest(root)[:DIGEST_CHARS]}"


@functools.lru_cache(maxsize=1)
def app_version() -> str:
    """The app version of the code this process runs (the tree ``xr0_core`` was imported from)."""
    import xr0_core

    return app_version_of(Path(xr0_core.__file__).resolve().parents[1])
