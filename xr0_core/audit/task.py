"""The audit as an evaluation task the coordinator may ask for (run config ``eval.audit = true``): each hospital
audits the global weights it received on its own patients and replies with the audit's scalars only
(:meth:`xr0_core.audit.run.AuditResult.flat_metrics`: AUROC, TPR at low FPR with intervals, epsilon lower
bounds), and only as its policy allows (``release.audit``, ``release.eval-metrics``). No count, no per-patient
score and no curve leaves; ``audit.json`` and ``roc.png`` of the round stay in ``<state-dir>/audit/round-<r>/``.

Raw scores (no reference models): training references costs a hospital as much as a round of training and is
left to ``xr0 audit --references``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from xr0_core.audit.run import AuditError
from xr0_core.config import XR0Config

log = logging.getLogger(__name__)

AUDIT_SKIPPED = "audit/skipped"  # 1.0: the audit could not run here (the reason stays in the site's log)


def audit_metrics(cfg: XR0Config, state_dir: Path, shared: Mapping[str, torch.Tensor],
                  records: Sequence[Any], *, server_round: int = 0) -> dict[str, float]:
    """The audit's scalars for the global weights ``shared`` at this site (``{"audit/skipped": 1}`` when the
    site has no held-out patients or canaries to audit with)."""
    from xr0_core.audit.site_audit import audit_site
    from xr0_core.eval.baseline import backbone_from_shared

    try:
        result, _ = audit_site(cfg, lambda: backbone_from_shared(cfg, shared), shared, Path(state_dir),
                               records=records, out=Path(state_dir) / "audit" / f"round-{server_round:04d}",
                               model=f"global weights of round {server_round}")
    except AuditError as exc:
        log.info("privacy audit skipped: %s", exc)
        return {AUDIT_SKIPPED: 1.0}
    return result.flat_metrics()
