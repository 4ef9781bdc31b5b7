"""Federated vs pooled vs random: the "what did federation cost" measurement of ``--compare-pooled``.

The pooled baseline is what ``xr0 pretrain`` does on the union of all hospitals' images, with the same
total number of optimizer steps at the same batch size as the federation spent (sites x rounds x local
steps), from the same initial weights. All three backbones are scored by k-NN and a linear probe of anatomy
on the pooled held-out images (``split == test``), features frozen.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def compare_backbones(cfg, dirs: list[Path], out: Path, n_sites: int) -> list[dict[str, Any]]:
    from server.checkpoint import load_latest
    from xr0_core.data.index import index_site
    from xr0_core.data.splits import holdout_split
    from xr0_core.eval.anatomy import anatomy_scores, pixel_anatomy_scores
    from xr0_core.eval.baseline import backbone_from_shared, random_init_backbone
    from xr0_core.runtime import resolve_device
    from xr0_core.ssl.factory import initial_shared_state
    from xr0_core.train.trainer import SiteTrainer

    records = [r for d in dirs for r in index_site(d, verify_pixels=False).records]
    labelled = [r for r in records if r.anatomy]
    train, test = holdout_split(labelled, cfg.seed)
    names = sorted({r.anatomy for r in train})
    device = resolve_device(cfg.train.device)
    ckpt = load_latest(out / "checkpoints")
    if ckpt is None:
        raise RuntimeError(f"no federated checkpoint in {out / 'checkpoints'} to compare")
    steps = n_sites * ckpt.round * cfg.train.local_steps
    print(f"[xr0] pooled baseline: {steps} steps on {len(records)} images", file=sys.stderr, flush=True)
    pooled = SiteTrainer(cfg, records, site="pooled")
    pooled.load_shared_state_dict(initial_shared_state(cfg))
    metrics = pooled.train(steps, start_step=0, total_steps=steps, progress=True)
    rows = []
    for label, weights in (
        (f"federated ({n_sites} hospitals, {ckpt.round} rounds)", ckpt.weights),
        (f"pooled ({steps} steps)", pooled.shared_state_dict()),
        ("random init", None),
    ):
        backbone = random_init_backbone(cfg) if weights is None else backbone_from_shared(cfg, weights)
        scores = anatomy_scores(cfg, backbone.to(device), train, test, names, device)
        rows.append({"backbone": label, "knn-anatomy": scores["knn"], "linear-anatomy": scores["linear"],
                     "test-images": int(scores["n_test"])})
    scores = pixel_anatomy_scores(cfg, train, test, names)
    rows.append({"backbone": "raw pixels (no backbone)", "knn-anatomy": scores["knn"],
                 "linear-anatomy": scores["linear"], "test-images": int(scores["n_test"])})
    rows[1]["final-loss"] = metrics.get("loss")
    return rows
