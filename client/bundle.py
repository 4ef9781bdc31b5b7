"""The app version of a reviewed checkout: the bundle ``flwr run`` would send from it, hashed as the hospital
hashes the bundle it is sent (:mod:`xr0_core.deploy.appversion`).

It lives beside the ClientApp, not in ``xr0_core``, because it calls Flower's own bundle builder
(``flwr.cli.build.build_fab_from_disk``): the same file selection (``.gitignore``, Flower's include and
exclude patterns, its rewrite of ``pyproject.toml``) as the coordinator's ``flwr run``, so the two agree for
the same files and the same Flower release (pinned: ``flwr>=1.42,<1.43``).
"""

from __future__ import annotations

from pathlib import Path

from xr0_core.deploy.appversion import BundleError, fab_version


def checkout_fab(root: str | Path) -> bytes:
    """The FAB bytes Flower builds from the app folder ``root`` (``flwr run ROOT`` / ``flwr build``).

    Raises
    ------
    BundleError
        ``root`` is not an app folder (no ``pyproject.toml``) or Flower refuses to bundle it.
    """
    from flwr.cli.build import build_fab_from_disk

    root = Path(root).expanduser().resolve()
    if not (root / "pyproject.toml").is_file():
        raise BundleError(f"{root} is not an app checkout (no pyproject.toml): pass --app with the reviewed "
                          "source tree the coordinator submits with `flwr run`")
    try:
        return build_fab_from_disk(root)
    except (ValueError, OSError) as exc:
        raise BundleError(f"Flower cannot bundle {root}: {exc}") from None


def checkout_version(root: str | Path) -> str:
    """The app version (``<project version>+<sha256>``) of the bundle built from the checkout ``root``."""
    return fab_version(checkout_fab(root))


def installed_checkout() -> Path:
    """The source tree this process imported the app from (an editable install: the checkout)."""
    import xr0_core

    return Path(xr0_core.__file__).resolve().parents[1]
