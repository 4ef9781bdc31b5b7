"""Every refusal a hospital makes about *who may ask what of it*, one function each (DESIGN D14).

The ClientApp, the secure-aggregation stages and the hospital's own ClientApp launcher call these; a
preflight can call them too, before any training or key exchange. Each raises
:class:`~xr0_core.site.policy.PolicyRefusal` (or :class:`~xr0_core.site.policy.PolicyError` for a broken
set-up) with a message that says what was refused and what to change; none of them reads private data.

- :func:`check_policy_file`   a missing policy file while the ledger holds DP releases (fail closed)
- :func:`check_plain_round`   a plain (unmasked) ``train`` message where secure aggregation is asked for
- :func:`check_bundle`        the coordinator's app bundle is not one the policy approves
- :func:`pinned_peer_keys`    secure aggregation without pinned peer signing keys
- :class:`UploadRecord`       a second masked upload (or session) for one (run, training round)

The policy itself (DP, accountant, delta, noise, thresholds) is met with the run config in
:func:`xr0_core.site.policy.negotiate`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from xr0_core.atomic import atomic_write_json
from xr0_core.site.policy import PolicyError, PolicyRefusal, SitePolicy

log = logging.getLogger(__name__)

UPLOADS_FILE = "secagg-uploads.json"  # in the state folder: every (run key, round) this site uploaded masked


# ---------------------------------------------------------------------------------------------- fail closed
def check_policy_file(path: Path, state_dir: Path) -> None:
    """Refuse to fall back to the policy defaults when the hospital has already released under DP.

    A mistyped ``policy`` path in the node config (or a deleted ``policy.toml``) would otherwise give the
    defaults (DP not required) and accept a DP-off run at a site whose ledger already counts DP releases.

    Raises
    ------
    PolicyError
        ``path`` does not exist and ``<state_dir>/privacy/ledger.json`` holds at least one release.
    """
    if Path(path).is_file():
        return
    from xr0_core.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(state_dir)
    if not ledger.exists():
        return
    releases = ledger.read().releases
    if releases:
        raise PolicyError(
            f"site policy {path} is missing, but this hospital's privacy ledger {ledger.path} holds "
            f"{len(releases)} differentially private release(s): refusing to run with the policy defaults "
            "(DP not required). Restore the policy file, or fix the node config's `policy` path")


def check_plain_round(policy: SitePolicy, cfg: Any) -> None:
    """A plain ``train`` message sends the site's weights to the coordinator unmasked.

    Raises
    ------
    PolicyRefusal
        The policy requires secure aggregation, or the run config itself asks for it (``secagg.enabled``):
        a coordinator that then sends plain ``train`` deviates from the run it announced.
    """
    if policy.secagg.required:
        raise PolicyRefusal("site policy: this hospital requires secure aggregation and refuses a plain train "
                            "message (its weights would reach the coordinator unmasked)")
    if cfg is not None and getattr(getattr(cfg, "secagg", None), "enabled", False):
        raise PolicyRefusal("the run config asks for secure aggregation (secagg.enabled = true) but the coordinator "
                            "sent a plain train message: refusing to send this hospital's weights unmasked")


# ---------------------------------------------------------------------------------------------- approved code
OLD_VERSION_DIGITS = 16  # app versions before issue 21 hashed the Python source only, to 16 hex digits


def check_bundle(policy: SitePolicy, version: str | None) -> None:
    """Refuse an app bundle whose version (:func:`xr0_core.deploy.appversion.bundle_version`) the policy's
    ``apps.allowed-versions`` does not list (an empty list allows any).

    ``version`` is the version the hospital's own launcher (``xr0 site clientapp``) computed from the bundle's
    bytes before anything ran; ``None`` means no launcher of the hospital's looked at the bundle (the SuperNode
    started Flower's ``flwr-clientapp``, which loads the coordinator's code): with an allow-list that is a
    refusal, since only a check outside the bundle's code can be trusted.

    Raises
    ------
    PolicyRefusal
        The message names the bundle's version, so the hospital can review that bundle and approve it, or
        says how to start the ClientApp so that the version is checked.
    """
    allowed = policy.apps.allowed_versions
    if not allowed:
        return
    if version is None:
        raise PolicyRefusal("site policy: this hospital approves only listed app versions (apps.allowed-versions), "
                            "but its ClientApp was not started by its own launcher, so no check outside the "
                            "coordinator's bundle saw the bundle: start the SuperNode with --isolation process and "
                            "run `xr0 site clientapp` next to it (docs/deploy-hospital.md)")
    if version in allowed:
        return
    old = [v for v in allowed if len(v.rpartition("+")[2]) == OLD_VERSION_DIGITS]
    hint = (f"; {len(old)} approved entr{'y is' if len(old) == 1 else 'ies are'} in the old source-only form "
            "(16 hex digits), which no longer matches any bundle: re-approve with `xr0 site app-version --app DIR`"
            if old else "")
    raise PolicyRefusal(f"site policy: app version {version!r} is not approved by this hospital "
                        f"(apps.allowed-versions = {list(allowed)}){hint}")


# ---------------------------------------------------------------------------------------------- pinned keys
def pinned_peer_keys(policy: SitePolicy, own_public: bytes, *, published: Iterable[bytes] | None = None
                     ) -> frozenset[bytes] | None:
    """The signing keys this site accepts for its secure-aggregation peers (its own included).

    Parameters
    ----------
    own_public : bytes
        This site's Ed25519 public signing key.
    published : iterable of bytes, optional
        Simulation only: the keys the simulated hospitals publish in their state folders.

    Returns
    -------
    frozenset of bytes, or None
        None only when the policy acknowledges running unpinned (``secagg.allow-unpinned = true``).

    Raises
    ------
    PolicyRefusal
        No ``secagg.peer-keys``, not in simulation, and unpinned not acknowledged: without pinned keys a
        coordinator can invent hospitals and every check of the consistency round binds nothing.
    """
    if policy.secagg.peer_keys:
        return frozenset(bytes.fromhex(k) for k in policy.secagg.peer_keys) | {own_public}
    if published is not None:
        return frozenset(published) | {own_public}
    if policy.secagg.allow_unpinned:
        log.warning("secure aggregation without pinned peer keys (secagg.allow-unpinned = true): a coordinator "
                    "that deviates from the protocol is not detected")
        return None
    raise PolicyRefusal(
        "site policy: secure aggregation needs the other hospitals' signing keys pinned (secagg.peer-keys; "
        "`xr0 site secagg-key` prints each hospital's); without them the coordinator could invent hospitals. "
        "Pin them, or acknowledge the risk with secagg.allow-unpinned = true")


# ---------------------------------------------------------------------------------------------- once per round
class UploadRecord:
    """The (run key, training round) pairs this site has sent a masked update for, on disk.

    Written (atomically, fsync'd) *before* the masked upload leaves, so neither a restart nor a second
    secure-aggregation session can make the site upload twice for one round: two sums of one round over
    different survivor sets would give the coordinator their difference, one site's update.

    File: ``<state-dir>/secagg-uploads.json`` = ``{"format": 1, "uploads": [{"run_key", "round", "time"}]}``.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / UPLOADS_FILE

    def _entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            raw = json.loads(self.path.read_text())
            entries = list(raw["uploads"])
            for e in entries:
                str(e["run_key"]), int(e["round"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PolicyError(f"{self.path} is unreadable ({exc}); restore it from a backup (it records which "
                              "rounds this hospital already uploaded; deleting it lets a coordinator repeat a "
                              "round)") from None
        return entries

    def uploaded(self, run_key: str, server_round: int) -> bool:
        return any(e["run_key"] == run_key and int(e["round"]) == int(server_round) for e in self._entries())

    def check(self, run_key: str, server_round: int) -> None:
        """Raises :class:`PolicyRefusal` when this site already uploaded for ``(run_key, server_round)``."""
        if self.uploaded(run_key, server_round):
            raise PolicyRefusal(
                f"secure aggregation: this hospital already sent its masked update for round {server_round} of "
                "this run; it uploads once per round (a second session would let the coordinator subtract two "
                "sums), refusing")

    def record(self, run_key: str, server_round: int) -> None:
        """Check, then record ``(run_key, server_round)`` durably; call right before the upload leaves."""
        entries = self._entries()
        self.check(run_key, server_round)
        entries.append({"run_key": str(run_key), "round": int(server_round),
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"format": 1, "uploads": entries})
