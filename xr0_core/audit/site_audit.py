"""The audit at a hospital, from its state folder and data folder: the membership split the site trained with,
its canaries, delta and ledger epsilon from its own policy and ledger, then :func:`xr0_core.audit.run.run_audit`
and the local outputs (``audit.json``, ``roc.png``).

Used by ``xr0 audit`` and by the evaluation task the coordinator may ask for (:mod:`xr0_core.audit.task`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from xr0_core.audit.canaries import read_canaries
from xr0_core.audit.run import (AuditError, AuditResult, Membership, _factory, model_scorer, run_audit,
                                site_membership)
from xr0_core.config import XR0Config
from xr0_core.data.splits import unit_of
from xr0_core.runtime import numpy_rng

log = logging.getLogger(__name__)


def trained_with_dp(state_dir: Path) -> bool:
    """Whether the site's ledger holds a release: its training then used the private hold-out."""
    from xr0_core.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(state_dir)
    return ledger.exists() and bool(ledger.read().releases)


def training_split(records: Sequence[Any], state_dir: Path, *, private: bool | None = None
                   ) -> tuple[list[Any], list[Any]]:
    """(trained-on side, held-out side) exactly as the site's rounds split them: under DP the private hold-out
    keyed by the site's id (:func:`xr0_core.data.splits.private_partition`), else ``split != test``."""
    from xr0_core.data.dataset import ssl_records

    if private is None:
        private = trained_with_dp(state_dir)
    if private:
        from xr0_core.data.splits import private_partition
        from xr0_core.site.state import IDENTITY_FILE

        ident = Path(state_dir) / IDENTITY_FILE
        if not ident.is_file():
            raise AuditError(f"{ident} is missing: the site's private hold-out is keyed by its id; audit with the "
                             "state folder the site trained with")
        return private_partition(records, json.loads(ident.read_text())["site_id"])
    return ssl_records(records), [r for r in records if getattr(r, "split", None) == "test"]


def limit_patients(membership: Membership, n: int, seed: int) -> Membership:
    """At most ``n`` members and ``n`` non-members (canaries always kept), a seeded choice."""
    if n <= 0:
        return membership
    rng = numpy_rng(seed, "audit-patients")
    keep = membership.canary.copy()
    for side in (membership.members, ~membership.members):
        idx = np.flatnonzero(side & ~membership.canary)
        keep[rng.permutation(idx)[:n]] = True
    sel = np.flatnonzero(keep)
    return Membership(tuple(membership.units[i] for i in sel), membership.members[sel], membership.canary[sel])


def audit_site(cfg: XR0Config, backbone_factory: Callable[[], torch.nn.Module],
               shared: Mapping[str, torch.Tensor] | None, state_dir: Path, data_dir: Path | None = None, *,
               records: Sequence[Any] | None = None, manifest: Path | None = None, references: int = 0,
               reference_steps: int = 0, canaries: bool = False, canary_guess_fraction: float = 1.0,
               views: int = 4, max_patients: int = 0, seed: int = 0, out: Path | None = None, model: str = "",
               write: bool = True, baseline: Mapping[str, torch.Tensor] | None = None) -> tuple[AuditResult, Path]:
    """Audit one model at the site whose state folder is ``state_dir`` (records from ``data_dir`` unless given).

    ``canary_guess_fraction``: share of the canaries the one-run audit guesses
    (:func:`xr0_core.audit.one_run.audit_canaries`). ``baseline``: shared weights training started from (e.g.
    the round-0 initialisation): without references, scores are calibrated as the difference to them
    (:func:`xr0_core.audit.run.run_audit`).

    Raises
    ------
    AuditError
        No held-out patients, no canaries with ``canaries=True``, or no decodable image.
    """
    from xr0_core.data.dataset import ImageCache
    from xr0_core.privacy.ledger import PrivacyLedger
    from xr0_core.site.state import site_policy

    state_dir = Path(state_dir)
    policy = site_policy(state_dir)
    if records is None:
        from xr0_core.data.index import index_site

        records = index_site(data_dir, manifest, verify_pixels=False).records
    train, held = training_split(records, state_dir)
    canary_set = read_canaries(state_dir)
    if canaries and canary_set is None:
        raise AuditError(f"--canaries: {state_dir} has no canaries (set privacy.audit-canaries = M in the site policy "
                         "before training; the coins are drawn at the first round that reads the data)")
    membership = limit_patients(site_membership(train, held, canary_set), max_patients, seed)
    wanted = set(membership.units)
    # decode now: ``kept`` (the images that decoded) is empty until the cache's first access
    images = ImageCache([r for r in records if unit_of(r) in wanted], cfg.train.load_size, progress=True).decode()
    present = {unit_of(r) for r in images.kept}
    if not present:
        raise AuditError("no audited image could be decoded")
    sel = [i for i, u in enumerate(membership.units) if u in present]
    membership = Membership(tuple(membership.units[i] for i in sel), membership.members[sel], membership.canary[sel])
    ledger = PrivacyLedger(state_dir)
    eps = None
    if ledger.exists() and ledger.read().releases:
        eps = float(ledger.epsilon(delta=policy.privacy.delta, accountant=policy.privacy.accountant))
    result = run_audit(cfg, images, membership, model_scorer(cfg, backbone_factory, shared, n_views=views, seed=seed),
                       policy.privacy.delta, references=references, reference_steps=reference_steps, seed=seed,
                       epsilon_ledger=eps, model=model, canary_guess_fraction=canary_guess_fraction,
                       baseline=None if baseline is None else model_scorer(
                           cfg, _factory(cfg, baseline), baseline if shared is not None else None, n_views=views,
                           seed=seed))
    out = Path(out) if out is not None else state_dir / "audit" / "report"
    if write:
        write_outputs(result, out)
    return result, out


def write_outputs(result: AuditResult, out: Path) -> None:
    """``audit.json`` and ``roc.png`` (log axes) in ``out``."""
    from xr0_core.atomic import atomic_write_json
    from xr0_core.audit.plot import write_roc_png

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "audit.json", result.to_json())
    write_roc_png({k: s.roc for k, s in result.scores.items()}, out / "roc.png",
                  title=f"membership inference, {result.membership.n_members} vs {result.membership.n_nonmembers} patients")
