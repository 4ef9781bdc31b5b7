"""Hospital-scale data: prepared shards vs the in-RAM cache (DESIGN D16; targets: RSS 20k/5k <= 1.2,
steps/s prepared / in-RAM >= 0.95).

    nice -n 5 python bench/site_scale.py [--sizes 5000,20000] [--steps 30] [--preset cpu-tiny] [--out DIR]

What it does (every number from this run, on this machine):

1. writes ``max(sizes)`` synthetic grayscale PNGs (``--image-side`` px, smooth shapes plus noise; data made by the
   bench, not the phantom generator, so 20k images take seconds);
2. ``prepare`` of the first ``min(sizes)`` images with 1 worker and with 2 workers (images/s), then of every
   size with ``--workers`` (the caches the training runs read);
3. for each size, a fresh training process that opens the prepared cache, reads every image once (an epoch of
   reads, so every shard page has been touched), then trains ``--steps`` SSL steps: peak RSS (``ru_maxrss``)
   and steps/s;
4. the same training process on the in-RAM cache (``ImageCache``: decode everything first) at the smallest size:
   steps/s and RSS; then, in that process, prepared and in-RAM alternate in blocks (training steps with the
   trainer's image source swapped, and batch building alone), which gives the steps/s ratio: separate processes
   minutes apart on a shared machine measure the machine's load, not the cache.

Prints one JSON object; ``--json-out FILE`` also writes it. No asserts (timings are machine facts). The machine
is shared: use smaller ``--sizes`` for a quick look; the JSON records what ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_images(folder: Path, n: int, side: int, seed: int = 0) -> list[Path]:
    """``n`` 8-bit PNGs ``[side, side * 5 // 4]``: a bright ellipse ("body") on a dark field, plus noise."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = side, side * 5 // 4
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"{i // 1000:03d}" / f"img{i:06d}.png"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        cy, cx, ry, rx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.45) * h, rng.uniform(0.2, 0.45) * w
        body = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1).astype(np.float32)
        img = 0.15 + 0.6 * body + 0.08 * rng.standard_normal((h, w)).astype(np.float32)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path, compress_level=1)
    return paths


def _child(args: argparse.Namespace) -> int:
    """One training process: open the image source, read every image once, train; print RSS and steps/s."""
    import resource

    import torch

    from xr0_core.config import from_flat
    from xr0_core.data.dataset import ImageCache
    from xr0_core.data.manifest import SiteRecord
    from xr0_core.data.prepared import PreparedImages
    from xr0_core.train.trainer import SiteTrainer

    cfg = from_flat({"preset": args.preset, "train.device": "cpu", **dict(s.split("=", 1) for s in args.overrides)})
    paths = [Path(p) for p in Path(args.list_file).read_text().split("\n") if p]
    records = [SiteRecord(path=p) for p in paths]
    t = time.perf_counter()
    if args.child == "prepared":
        source = PreparedImages(records, args.prepared)
    else:
        source = ImageCache(records, cfg.train.load_size, progress=False).decode()
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    checksum = 0.0
    for i in range(len(source)):  # an epoch of reads: every page of the cache touched once
        checksum += float(source[i][0, 0, 0])
    epoch_s = time.perf_counter() - t
    trainer = SiteTrainer(cfg, [], site="bench", cache=source, device=torch.device("cpu"))
    trainer.train(2, start_step=0, total_steps=args.steps + 2)  # warm-up (allocator, first-call overheads)
    t = time.perf_counter()
    trainer.train(args.steps, start_step=2, total_steps=args.steps + 2)
    steps_per_s = args.steps / (time.perf_counter() - t)
    result = {"images": len(source), "open_s": round(open_s, 2), "read_all_s": round(epoch_s, 2),
              "read_all_images_per_s": round(len(source) / epoch_s, 1), "steps_per_s": round(steps_per_s, 3),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if args.child == "ram" and args.prepared:
        result["interleaved"] = _interleaved(trainer, source, PreparedImages(records, args.prepared), cfg, args)
    print(json.dumps(result))
    return 0


def _interleaved(trainer, ram, prepared, cfg, args: argparse.Namespace) -> dict:
    """Prepared vs in-RAM in ONE process, alternating blocks, so the shared machine's load drifts out of the
    ratio: training steps (the same trainer, its image source swapped) and batch building alone (reads + views)."""
    from xr0_core.data.dataset import BatchMaker

    block, rounds = max(1, args.steps // 4), 4
    times = {"ram": 0.0, "prepared": 0.0}
    data = {"ram": 0.0, "prepared": 0.0}
    step = 1000
    for _ in range(rounds):
        for name, src in (("prepared", prepared), ("ram", ram)):
            trainer.cache, trainer._maker = src, None
            t = time.perf_counter()
            trainer.train(block, start_step=step, total_steps=10**6)
            times[name] += time.perf_counter() - t
            maker = BatchMaker(src, cfg, site="bench", patch_size=trainer.model.patch_size)
            t = time.perf_counter()
            for i in range(block * 4):
                maker(step + i)
            data[name] += time.perf_counter() - t
        step += block
    n = rounds * block
    return {"blocks": rounds, "steps_per_block": block,
            "steps_per_s": {k: round(n / v, 4) for k, v in times.items()},
            "steps_ratio_prepared_over_ram": round(times["ram"] / times["prepared"], 3),
            "batches_per_s": {k: round(4 * n / v, 2) for k, v in data.items()},
            "batch_build_ratio_prepared_over_ram": round(data["ram"] / data["prepared"], 3)}


def _run_child(kind: str, paths: list[Path], prepared: Path | None, args: argparse.Namespace, tmp: Path) -> dict:
    list_file = tmp / f"list-{kind}-{len(paths)}.txt"
    list_file.write_text("\n".join(str(p) for p in paths))
    cmd = [sys.executable, __file__, "--child", kind, "--list-file", str(list_file), "--steps", str(args.steps),
           "--preset", args.preset] + [f"--set={s}" for s in args.overrides]
    if prepared is not None:
        cmd += ["--prepared", str(prepared)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(
        Path(__file__).resolve().parents[1])})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,20000", help="comma-separated site sizes (images)")
    ap.add_argument("--image-side", type=int, default=192, help="shorter side of the synthetic source images")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per process")
    ap.add_argument("--preset", default="cpu-tiny")
    ap.add_argument("--workers", type=int, default=2, help="prepare workers for the training caches")
    ap.add_argument("--out", type=Path, default=None, help="keep images and caches here (default: a temp dir)")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--child", choices=["prepared", "ram"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--list-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prepared", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)

    from xr0_core.config import from_flat
    from xr0_core.data.prepared import prepare_site

    cfg = from_flat({"preset": args.preset, **dict(s.split("=", 1) for s in args.overrides)})
    sizes = sorted(int(s) for s in args.sizes.split(","))
    tmpdir = tempfile.TemporaryDirectory(prefix="xr0-scale-") if args.out is None else None
    root = Path(tmpdir.name) if tmpdir else args.out
    root.mkdir(parents=True, exist_ok=True)
    result: dict = {"preset": args.preset, "load_size": cfg.train.load_size, "sizes": sizes, "steps": args.steps,
                    "image_side": args.image_side, "cpu_count": os.cpu_count(), "dtype": "uint16"}
    try:
        t = time.perf_counter()
        all_paths = write_images(root / "site", sizes[-1], args.image_side)
        result["write_images_s"] = round(time.perf_counter() - t, 1)
        print(f"[bench] {len(all_paths)} source images in {root / 'site'}", file=sys.stderr, flush=True)

        small = all_paths[: sizes[0]]
        prep = {}
        for w in (1, 2):
            rep = prepare_site(root / "site", root / f"prep-speed-w{w}", cfg.train.load_size, workers=w, paths=small,
                               verify=False)
            prep[f"workers_{w}"] = round(rep.images_per_second, 1)
            print(f"[bench] prepare {len(small)} images, {w} worker(s): {rep.images_per_second:.1f} images/s",
                  file=sys.stderr, flush=True)
        result["prepare_images_per_s"] = prep
        result["prepare_speedup_2_over_1"] = round(prep["workers_2"] / prep["workers_1"], 2)

        runs = {}
        for n in sizes:
            folder = root / f"prep-{n}"
            rep = prepare_site(root / "site", folder, cfg.train.load_size, workers=args.workers,
                               paths=all_paths[:n], verify=False)
            runs[n] = _run_child("prepared", all_paths[:n], folder, args, root)
            runs[n]["shards_mb"] = round(sum(p.stat().st_size for p in folder.glob("shard-*.bin")) / 2**20, 1)
            print(f"[bench] prepared, {n} images: {runs[n]}", file=sys.stderr, flush=True)
        ram = _run_child("ram", all_paths[: sizes[0]], root / f"prep-{sizes[0]}", args, root)
        print(f"[bench] in RAM, {sizes[0]} images: {ram}", file=sys.stderr, flush=True)
        result["prepared"] = {str(n): r for n, r in runs.items()}
        result["in_ram"] = {str(sizes[0]): ram}
        result["rss_ratio_largest_over_smallest"] = round(runs[sizes[-1]]["peak_rss_mb"] / runs[sizes[0]]["peak_rss_mb"], 3)
        # Separate processes run minutes apart on a shared machine: the interleaved ratio is the one to read.
        result["steps_ratio_prepared_over_ram_separate_runs"] = round(runs[sizes[0]]["steps_per_s"] / ram["steps_per_s"], 3)
        result["steps_ratio_prepared_over_ram"] = ram["interleaved"]["steps_ratio_prepared_over_ram"]
        result["batch_build_ratio_prepared_over_ram"] = ram["interleaved"]["batch_build_ratio_prepared_over_ram"]
        result["targets"] = {"rss_ratio": "<= 1.2", "steps_ratio": ">= 0.95"}
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
