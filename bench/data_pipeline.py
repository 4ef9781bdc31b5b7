"""Data pipeline throughput vs training consumption (DESIGN target: ratio >= 3).

    python bench/data_pipeline.py [--data DIR] [--preset cpu-tiny] [--images 64] [--steps 5] [--set k=v ...]

Measures on this machine, single process:

1. decode + preprocess: ``read_image`` + resize/crop into the cache, from files, cold cache (images/s);
2. views: multi-crop + iBOT masks per image, from the cache (images/s);
3. pipeline = 1/(1/decode + 1/views): a cold image through both (images/s);
4. training: SiteTrainer steps on prepared batches (images/s = batch size / step time).

Prints the numbers and the ratio pipeline / training; no asserts (timings are machine facts, not tests).
Without ``--data`` it writes a small synthetic site first (xr0_core.data.synthetic).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from xr0_core.config import from_flat
    from xr0_core.data.dataset import BatchMaker, ImageCache
    from xr0_core.data.images import read_image
    from xr0_core.data.index import index_site
    from xr0_core.ssl.schedules import Schedules
    from xr0_core.train.loop import train_step
    from xr0_core.train.trainer import SiteTrainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--preset", default="cpu-tiny")
    ap.add_argument("--images", type=int, default=64, help="images to decode (cold)")
    ap.add_argument("--steps", type=int, default=5, help="training steps to time (after 1 warm-up step)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = from_flat({"preset": args.preset, **dict(s.split("=", 1) for s in args.overrides)})

    tmp = None
    data = args.data
    if data is None:
        from xr0_core.data.synthetic import write_federation

        tmp = tempfile.TemporaryDirectory(prefix="xr0-bench-")
        data = write_federation(Path(tmp.name), n_sites=1, images_per_site=args.images, seed=0)[0]
    records = index_site(data, verify_pixels=False).records[: args.images]

    t = time.perf_counter()
    cache = ImageCache(records, cfg.train.load_size, reader=read_image, progress=False).decode()
    decode_ips = len(cache) / (time.perf_counter() - t)

    trainer = SiteTrainer(cfg, [], site="bench", cache=cache, device=torch.device(
        "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"))
    maker = BatchMaker(cache, cfg, site="bench", patch_size=trainer.model.patch_size)
    bsz = cfg.train.batch_size
    n_batches = max(2, args.steps + 1)
    t = time.perf_counter()
    batches = [maker(i) for i in range(n_batches)]
    views_ips = n_batches * bsz / (time.perf_counter() - t)
    pipeline_ips = 1.0 / (1.0 / decode_ips + 1.0 / views_ips)

    sched = Schedules.build(cfg, n_batches)
    for b in batches:
        b.pop("index")
    dev = trainer.device
    train_step(trainer.model, trainer.optimizer, batches[0], sched, 0, device=dev)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i, b in enumerate(batches[1:], start=1):
        train_step(trainer.model, trainer.optimizer, b, sched, i, device=dev, precision=cfg.train.precision)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_ips = (n_batches - 1) * bsz / (time.perf_counter() - t)

    result = {
        "preset": cfg.preset, "device": str(dev), "torch_threads": torch.get_num_threads(),
        "images": len(cache), "batch_size": bsz,
        "decode_preprocess_images_per_s": round(decode_ips, 1),
        "views_images_per_s": round(views_ips, 1),
        "pipeline_images_per_s": round(pipeline_ips, 1),
        "train_images_per_s": round(train_ips, 1),
        "ratio_pipeline_over_train": round(pipeline_ips / train_ips, 2),
        "ratio_views_over_train": round(views_ips / train_ips, 2),
        "target_ratio": 3.0,
    }
    print(json.dumps(result, indent=2))
    print("note: decode happens once per image (cached); per step only views are rebuilt, so the steady-state "
          "ratio is views / train.", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
