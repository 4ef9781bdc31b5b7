"""DP-SGD step vs non-private step, same model and batch (DESIGN target: DP step <= 1.3x non-DP).

    python bench/dp_overhead.py [--presets cpu-tiny,vit-s] [--routes vmap,microbatch] [--batch 0] [--steps 3]
                                [--device auto] [--json]

For each preset: the non-private ``train_step`` and one DP step per per-sample-gradient route
(``privacy.grad-sample-mode``: vmap = torch.func, microbatch = one pass per unit) on the same B images
(one image per privacy unit, q = 1, so every step has exactly B units), median step time over ``--steps``
after one warm-up step, and peak memory: CUDA peak allocated on GPU; on CPU the process's peak RSS, each
measurement in a fresh subprocess so peaks do not mix. Prints a table and the DP / non-DP ratios. No
asserts: timings are facts of the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(preset: str, mode: str, batch: int, steps: int, device: str) -> dict:
    """One measurement in this process: ``mode`` is ``plain`` or a DP route."""
    import resource

    import torch

    from xr0_core.privacy.dp import dp_step
    from xr0_core.ssl.schedules import Schedules
    from xr0_core.train.loop import train_step

    from bench_site import random_image_trainer  # bench/ is on sys.path when a bench runs

    over = {"preset": preset, "train.device": device, "privacy.enabled": mode != "plain"}
    if mode != "plain":
        over["privacy.grad-sample-mode"] = mode
    if batch:
        over["train.batch-size"] = batch
    tr, maker, idx = random_image_trainer(over)
    cfg, b = tr.cfg, len(idx)
    sched = Schedules.build(cfg, steps + 1)
    dev = tr.device
    if mode == "plain":
        batch_t = maker.build(0, idx)
        batch_t.pop("index")

        def step(i):
            train_step(tr.model, tr.optimizer, batch_t, sched, i, device=dev, precision=cfg.train.precision,
                       grad_clip=cfg.train.grad_clip)
    else:
        dp = dp_step(tr, noise_multiplier=1.0, sample_rate=1.0, seed=0)
        dp.sampler.draw = lambda: (idx, torch.arange(b))  # exactly B units of one image each
        maker.build = (lambda built: (lambda s, i, secret=None: built))(maker.build(0, idx))  # same views as the plain run

        def step(i):
            dp(tr, None, sched, i, rng_seed=i, sync=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step(0)  # warm-up (allocations, kernels)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"preset": preset, "mode": mode, "batch": b, "device": str(dev), "step_s": statistics.median(times),
            "peak_mb": peak / 2**20, "peak_kind": "cuda-allocated" if dev.type == "cuda" else "process-rss"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="cpu-tiny,vit-s")
    ap.add_argument("--routes", default="vmap,microbatch")
    ap.add_argument("--batch", type=int, default=0, help="images per step (0: the preset's train.batch-size)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: "preset:mode" in a subprocess
    args = ap.parse_args(argv)
    if args.one:
        preset, mode = args.one.split(":")
        print(json.dumps(measure(preset, mode, args.batch, args.steps, args.device)))
        return 0
    rows = []
    for preset in args.presets.split(","):
        for mode in ["plain", *args.routes.split(",")]:
            cmd = [sys.executable, __file__, "--one", f"{preset}:{mode}", "--batch", str(args.batch),
                   "--steps", str(args.steps), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                rows.append({"preset": preset, "mode": mode, "error": proc.stderr.strip().splitlines()[-1][:200]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = {r["preset"]: r for r in rows if r["mode"] == "plain" and "step_s" in r}
    for r in rows:
        if r["mode"] != "plain" and "step_s" in r and r["preset"] in base:
            r["time_ratio"] = r["step_s"] / base[r["preset"]]["step_s"]
            r["memory_ratio"] = r["peak_mb"] / base[r["preset"]]["peak_mb"]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'preset':<10}{'mode':<12}{'batch':>6}{'step s':>10}{'peak MB':>10}{'x time':>8}{'x mem':>8}  device")
        for r in rows:
            if "error" in r:
                print(f"{r['preset']:<10}{r['mode']:<12} failed: {r['error']}")
                continue
            print(f"{r['preset']:<10}{r['mode']:<12}{r['batch']:>6}{r['step_s']:>10.4f}{r['peak_mb']:>10.0f}"
                  f"{r.get('time_ratio', 1.0):>8.2f}{r.get('memory_ratio', 1.0):>8.2f}  {r['device']} ({r['peak_kind']})")
        print("target: DP step <= 1.3x the non-private step (DESIGN)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
