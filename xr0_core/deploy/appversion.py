"""What "app version" means for a hospital's allow-list (site policy ``apps.allowed-versions``).

An app version names one Flower app bundle (FAB, the zip ``flwr run`` sends): ``<project version>+<digest>``,
e.g. ``0.1.0+3f9c...`` (64 hex digits), where the digest is a SHA-256 over

- the bundle's entry-point mapping (``[tool.flwr.app.components]`` of its ``pyproject.toml``, which names
  the modules Flower would load), as canonical JSON, and
- every file of the bundle, as (path, bytes), in sorted order: code, ``pyproject.toml`` (run-config
  defaults, dependencies), docs, Flower's ``.info/CONTENT`` manifest.

So a bundle that copies the approved packages and adds one module, or changes only ``client/``, or only
points the mapping elsewhere, has another version. The hospital computes the version of the bundle it was
*sent*, from the bytes, without unpacking or importing anything (``client/launcher.py``, ``xr0 site
clientapp``); ``xr0 site app-version --app DIR`` builds the bundle of a reviewed checkout with Flower's own
builder and hashes it with the same function (``client/bundle.py``), so the two agree for the same files.

Why the whole bundle, not only its Python source (the form before issue 21, 16 hex digits): the check
runs at the hospital over what the coordinator submitted; a digest over chosen packages left every other
file (an extra entry module, the mapping) unchecked. The cost: a changed doc in the bundle is a new version
to approve. The code the hospital *runs* is its own installed ClientApp in any case, never the bundle's;
the version decides whether the hospital takes part in the run the bundle describes (its ServerApp, its
run-config defaults).
"""

from __future__ import annotations

import hashlib
import io
import json
import tomllib
import zipfile
from typing import Mapping

BUNDLE_FORMAT = b"xr0-bundle-v1\n"  # changes when the digest's definition changes
CONFIG_FILE = "pyproject.toml"


class BundleError(ValueError):
    """The bytes are not an app bundle a version can be computed for; the message says what is wrong."""


def bundle_files(fab: bytes) -> dict[str, bytes]:
    """The files of a FAB (zip) as ``{path: bytes}``, read in memory (nothing is written or imported).

    Raises
    ------
    BundleError
        Not a zip, a path that appears twice (two readers could pick different copies), or no
        ``pyproject.toml``.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as zf:
            files: dict[str, bytes] = {}
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if info.filename in files:
                    raise BundleError(f"the app bundle holds {info.filename!r} twice")
                files[info.filename] = zf.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise BundleError(f"the app bundle is not a readable zip file ({exc})") from None
    if CONFIG_FILE not in files:
        raise BundleError(f"the app bundle has no {CONFIG_FILE}")
    return files


def entry_points(files: Mapping[str, bytes]) -> dict[str, str]:
    """The bundle's ``[tool.flwr.app.components]`` (e.g. ``{"clientapp": "client.app:app", ...}``)."""
    config = _config(files)
    components = config.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    if not isinstance(components, dict):
        raise BundleError(f"{CONFIG_FILE} [tool.flwr.app.components] is not a table")
    return {str(k): str(v) for k, v in components.items()}


def bundle_version(files: Mapping[str, bytes]) -> str:
    """``<project version>+<SHA-256 hex>`` of a bundle's files (:func:`bundle_files`); see the module doc."""
    version = _config(files).get("project", {}).get("version")
    if not isinstance(version, str) or not version:
        raise BundleError(f"the app bundle's {CONFIG_FILE} has no [project].version")
    h = hashlib.sha256(BUNDLE_FORMAT)
    mapping = json.dumps(entry_points(files), sort_keys=True, separators=(",", ":")).encode()
    h.update(len(mapping).to_bytes(8, "big") + mapping)
    for name in sorted(files):
        path, data = name.encode(), files[name]
        h.update(len(path).to_bytes(4, "big") + path + len(data).to_bytes(8, "big") + data)
    return f"{version}+{h.hexdigest()}"


def fab_version(fab: bytes) -> str:
    """The app version of FAB bytes (:func:`bundle_files` then :func:`bundle_version`)."""
    return bundle_version(bundle_files(fab))


def _config(files: Mapping[str, bytes]) -> dict:
    try:
        return tomllib.loads(files[CONFIG_FILE].decode("utf-8"))
    except KeyError:
        raise BundleError(f"the app bundle has no {CONFIG_FILE}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleError(f"the app bundle's {CONFIG_FILE} is not valid TOML ({exc})") from None
