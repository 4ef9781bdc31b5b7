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
    from xr0_core.eval.baseline import PIXELS, backbone_from_shared, random_init_backbone
    from xr0_core.eval.suite import PROBE, run_suite, with_split
    from xr0_core.ssl.factory import initial_shared_state
    from xr0_core.train.trainer import SiteTrainer

    records = [r for d in dirs for r in index_site(d, verify_pixels=False).records]
    labelled = [r for r in records if r.anatomy]
    train, test = holdout_split(labelled, cfg.seed)
    ckpt = load_latest(out / "checkpoints")
    if ckpt is None:
        raise RuntimeError(f"no federated checkpoint in {out / 'checkpoints'} to compare")
    steps = n_sites * ckpt.round * cfg.train.local_steps
    print(f"[xr0] pooled baseline: {steps} steps on {len(records)} images", file=sys.stderr, flush=True)
    pooled = SiteTrainer(cfg, records, site="pooled")
    pooled.load_shared_state_dict(initial_shared_state(cfg))
    metrics = pooled.train(steps, start_step=0, total_steps=steps, progress=True)
    pooled_weights = pooled.shared_state_dict()
    labels = {"federated": f"federated ({n_sites} hospitals, {ckpt.round} rounds)",
              "pooled": f"pooled ({steps} steps)", "random": "random init", PIXELS: "raw pixels (no backbone)"}
    backbones = {"federated": lambda: backbone_from_shared(cfg, ckpt.weights),
                 "pooled": lambda: backbone_from_shared(cfg, pooled_weights),
                 "random": lambda: random_init_backbone(cfg)}
    # The anatomy probe of the evaluation suite (k-NN and linear probe on frozen CLS features) for every backbone
    # and the raw pixels, on the pooled held-out images.
    outputs, result = run_suite(cfg, with_split(train, test), backbones, tasks=PROBE, pixels=True)
    rows = []
    for name, label in labels.items():
        scores = outputs.get(name, {}).get("metrics", {}).get("classification/anatomy", {})
        rows.append({"backbone": label, "knn-anatomy": scores.get("knn-accuracy", float("nan")),
                     "linear-anatomy": scores.get("linear-accuracy", float("nan")),
                     "test-images": int(result.counts.get("classification/anatomy", 0))})
    rows[1]["final-loss"] = metrics.get("loss")
    return rows
