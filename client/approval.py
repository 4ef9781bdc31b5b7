"""Which app bundle this process's hospital launcher approved (``xr0 site clientapp``; client/launcher.py).

The launcher checks the bundle the coordinator submitted against the site policy before it runs the
hospital's installed ClientApp in the same process, and records the version it checked here; the ClientApp's
own check (:func:`client.app._checked_config`) reads it. ``None`` means no launcher of the hospital's looked
at the bundle: the ClientApp was loaded by Flower (``flwr-clientapp``, simulation), i.e. possibly from the
coordinator's code, so a policy with an allow-list refuses (:func:`xr0_core.site.refusals.check_bundle`).
One ClientApp process answers one message, so one value per process is enough.
"""

from __future__ import annotations

_verified: str | None = None


def set_verified(version: str | None) -> None:
    """Record the bundle version the launcher checked against the policy (``None``: forget it)."""
    global _verified
    _verified = version


def verified_version() -> str | None:
    """The bundle version the launcher checked in this process, ``None`` when no launcher did."""
    return _verified
