"""A hospital's state folder: its stable identity and its policy, independent of where its data lives.

The state folder (``state-dir``) is the hospital's identity: the privacy ledger, the site policy, the audit
log and local SSL state all live there. It never moves with the data path: re-pointing ``data-path`` at a
new export (or a symlink that now resolves elsewhere) keeps the same ledger, so epsilon already spent keeps
counting. ``site.json`` records the identity at first use and every data path the site has trained from.

Files::

    <state-dir>/site.json          {"site_id", "name", "created", "data_paths": [...]}
    <state-dir>/policy.toml        the site policy (xr0_core/site/policy.py)
    <state-dir>/privacy/ledger.json
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from xr0_core.atomic import atomic_write_json
from xr0_core.site.policy import SitePolicy, adopt_node_budget, load_policy, policy_path, save_policy

log = logging.getLogger(__name__)

IDENTITY_FILE = "site.json"


class SiteStateError(RuntimeError):
    """The state folder is unusable (unreadable identity file); the message says what to do."""


@dataclass(frozen=True)
class SiteIdentity:
    site_id: str
    name: str
    created: float
    data_paths: list[str] = field(default_factory=list)


def ensure_identity(state_dir: Path, name: str, data_dir: Path | None = None) -> SiteIdentity:
    """Read ``<state-dir>/site.json`` (creating it at first use) and note ``data_dir`` if it is new.

    A new data path is logged, not refused: the ledger belongs to the state folder, so re-pointing the data
    keeps the privacy history. Only the state folder itself must stay the same.
    """
    state_dir = Path(state_dir)
    path = state_dir / IDENTITY_FILE
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            ident = SiteIdentity(str(raw["site_id"]), str(raw.get("name", name)), float(raw.get("created", 0)),
                                 [str(p) for p in raw.get("data_paths", [])])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SiteStateError(f"{path} is unreadable ({exc}); restore it from a backup (it names this "
                                 "hospital's state; never delete the state folder)") from None
    else:
        ident = SiteIdentity(secrets.token_hex(8), name, time.time(), [])
    changed = not path.is_file()
    if data_dir is not None and str(data_dir) not in ident.data_paths:
        changed = True
        if ident.data_paths:
            log.warning("site %s: data path is now %s (before: %s); the privacy ledger and policy in %s still "
                        "apply", ident.name, data_dir, ident.data_paths[-1], state_dir)
        ident = SiteIdentity(ident.site_id, ident.name, ident.created, [*ident.data_paths, str(data_dir)])
    if changed:  # written when new or re-pointed only: every message of a round resolves its site (issue 27)
        state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, ident.__dict__)
    return ident


def site_policy(state_dir: Path, node_config: Mapping[str, object] | None = None, *, budget: float | None = None,
                delta: float | None = None) -> SitePolicy:
    """The site's policy, after two one-time merges that keep older set-ups working:

    - a ledger written before site policies existed holds the budget, delta and accountant: they move into a
      new policy file (the ledger's releases stay where they are);
    - the node config's ``privacy-budget`` / ``privacy-delta`` (``budget`` / ``delta`` here) are merged in
      (:func:`~xr0_core.site.policy.adopt_node_budget`: the stricter value wins).

    Fails closed: no policy file (after those merges) while the ledger holds DP releases raises
    :class:`~xr0_core.site.policy.PolicyError` naming the path it looked for
    (:func:`~xr0_core.site.refusals.check_policy_file`), instead of giving the defaults (DP not required).
    """
    path = policy_path(state_dir, node_config)
    if not path.is_file():
        from xr0_core.privacy.ledger import PrivacyLedger

        ledger = PrivacyLedger(state_dir)
        legacy = ledger.read() if ledger.exists() else None
        if legacy is not None and legacy.budget is not None:
            import dataclasses

            accountant = legacy.accountant if legacy.accountant in ("rdp", "prv") else "rdp"
            policy = SitePolicy(privacy=dataclasses.replace(SitePolicy().privacy, budget=float(legacy.budget),
                                                            delta=float(legacy.delta or 1e-5),
                                                            accountant=accountant))
            save_policy(policy, path)
            log.info("site policy %s created from the budget in %s", path, ledger.path)
    if budget is not None or delta is not None:
        return adopt_node_budget(path, budget, delta)
    from xr0_core.site.refusals import check_policy_file

    check_policy_file(path, Path(state_dir))
    return load_policy(path)
