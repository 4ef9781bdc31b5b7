"""ViT-B (``vit-b`` preset) evaluation on CPU: a few hundred synthetic images, every task family.

    python bench/eval_vit_b.py [--images 300] [--head-steps 20] [--out /tmp/xr0-eval-vitb]

Prints wall time per phase and peak resident memory (``ru_maxrss``) as JSON. The backbone runs once per
image without gradient (batched by ``eval.batch-size``); only the light heads train.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--head-steps", type=int, default=20)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--out", type=Path, default=Path("/tmp/xr0-eval-vitb"))
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    from xr0_core.config import from_flat
    from xr0_core.data.index import index_site
    from xr0_core.data.synthetic import write_federation
    from xr0_core.eval.suite import evaluate_backbone

    t0 = time.perf_counter()
    site = args.out / "site00"
    if not (site / "manifest.csv").is_file():
        write_federation(args.out, 1, args.images, seed=0, image_size=args.image_size)
    records = index_site(site, verify_pixels=False).records
    t_data = time.perf_counter() - t0
    cfg = from_flat({"preset": "vit-b", "train.device": args.device, "eval.head-steps": args.head_steps,
                     "eval.batch-size": 16, "eval.head-batch-size": 16})
    t1 = time.perf_counter()
    result = evaluate_backbone(cfg, records, None, device=args.device)
    out = {"images": result.images, "tasks": sorted(result.baseline_random), "skipped": result.skipped,
           "data_seconds": round(t_data, 1), "eval_seconds": round(time.perf_counter() - t1, 1),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
           "baseline_random": result.baseline_random}
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
