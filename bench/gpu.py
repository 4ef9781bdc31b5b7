"""Training throughput and model FLOP utilisation (MFU) of the SSL step (DESIGN target: bf16 MFU >= 40 %).

    python bench/gpu.py                                   # CUDA: vit-s and vit-b, plain and DP
    python bench/gpu.py --presets cpu-tiny --batch 8      # CPU, CI-sized (what runs without a GPU)
    python bench/gpu.py --presets vit-s,vit-b --batch 64,128 --steps 20 --compile --json-out bench/results/gpu.json

Per preset x batch x mode (``plain`` train step, ``dp`` = DP-SGD step through the vmap route), each in a fresh
subprocess: images/s over ``--steps`` steps after ``--warmup`` steps, with the hot loop of the trainer (bf16
autocast on CUDA, timm's fused scaled-dot-product attention, fused AdamW on CUDA, pinned host batches copied
non-blocking, no host sync inside the timed loop; ``--compile`` adds ``torch.compile``).

FLOPs are counted from the model: ``torch.utils.flop_counter.FlopCounterMode`` over one whole training step
(teacher forward, student forward and backward, heads) with attention unfused so its matmuls are counted. MFU =
FLOPs per step x steps/s / peak. The DP row uses the same model FLOPs (per-unit gradients are overhead, not
model work). Peak: on CUDA, the dense bf16 tensor-core peak of the device from :data:`PEAKS` (NVIDIA datasheets,
source named in the output); on CPU, the fp32 matmul throughput measured here (best of 5 square matmuls), so the
CPU MFU says how close the step comes to what this machine's matmul can do.

Prints a table and one JSON object; no asserts (timings are machine facts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, from NVIDIA's product datasheets (SXM parts where both exist).
PEAKS: dict[str, tuple[float, str]] = {
    "H200": (989e12, "NVIDIA H200 Tensor Core GPU datasheet (bf16 dense 989 TFLOPS, SXM)"),
    "H100": (989e12, "NVIDIA H100 Tensor Core GPU datasheet (bf16 dense 989 TFLOPS, SXM)"),
    "A100": (312e12, "NVIDIA A100 Tensor Core GPU datasheet (bf16 dense 312 TFLOPS)"),
    "L40S": (362e12, "NVIDIA L40S datasheet (bf16 dense 362 TFLOPS)"),
    "L4": (121e12, "NVIDIA L4 datasheet (bf16 dense 121 TFLOPS)"),
    "A10": (125e12, "NVIDIA A10 datasheet (bf16 dense 125 TFLOPS)"),
}


def device_peak(device: str) -> tuple[float, str]:
    """Peak FLOP/s and where the number comes from."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in PEAKS.items():
            if key in name:
                return value
        raise SystemExit(f"no peak for {name!r} in bench/gpu.py PEAKS; add its dense bf16 datasheet number")
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best, f"measured fp32 matmul {n}x{n} on this CPU, {torch.get_num_threads()} threads, best of 5"


def count_step_flops(trainer, batch, sched) -> float:
    """FLOPs of one full training step (forward + backward), attention unfused so it is counted."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from xr0_core.train.per_unit import unfused_attention
    from xr0_core.train.loop import build_optimizer, train_step

    model = copy.deepcopy(trainer.model)  # the counted step must not move the timed model
    opt = build_optimizer(model)
    counter = FlopCounterMode(display=False)
    with unfused_attention(model), counter:
        train_step(model, opt, batch, sched, 0, device=trainer.device, precision=trainer.cfg.train.precision,
                   grad_clip=trainer.cfg.train.grad_clip)
    return float(counter.get_total_flops())


def measure(preset: str, mode: str, batch: int, steps: int, warmup: int, device: str, compile_: bool) -> dict:
    import torch

    from xr0_core.ssl.schedules import Schedules
    from xr0_core.train.loop import host_metrics, train_step

    from bench_site import random_image_trainer  # bench/ is on sys.path when a bench runs

    over = {"preset": preset, "train.device": device, "privacy.enabled": mode == "dp",
            "train.compile": compile_ and mode == "plain"}
    if batch:
        over["train.batch-size"] = batch
    tr, maker, idx = random_image_trainer(over)
    cfg, b = tr.cfg, len(idx)
    built = maker.build(0, idx)
    built.pop("index")
    dev = tr.device
    if dev.type == "cuda":
        built = {k: v.pin_memory() for k, v in built.items()}  # what the DataLoader hands over with pin_memory
    sched = Schedules.build(cfg, steps + warmup + 1)
    flops = count_step_flops(tr, built, sched)
    tr._maybe_compile()
    if mode == "plain":
        def step(i):
            return train_step(tr.model, tr.optimizer, built, sched, i, device=dev, precision=cfg.train.precision,
                              grad_clip=cfg.train.grad_clip, sync=False)
    else:
        from xr0_core.privacy.dp import dp_step

        dp = dp_step(tr, noise_multiplier=1.0, sample_rate=1.0, seed=0)
        dp.sampler.draw = lambda: (idx, torch.arange(b))  # exactly B units of one image each
        maker.build = lambda s, i, **kw: {**built, "index": idx}

        def step(i):
            return dp(tr, None, sched, i, rng_seed=i, sync=False)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for i in range(warmup):
        host_metrics(step(i))
    sync()
    t = time.perf_counter()
    last = None
    for i in range(warmup, warmup + steps):
        last = step(i)
    host_metrics(last)  # the one host sync of the timed loop
    sync()
    seconds = time.perf_counter() - t
    peak, source = device_peak(dev.type)
    steps_per_s = steps / seconds
    attn = [m for m in tr.model.modules() if hasattr(m, "fused_attn")]
    return {"preset": preset, "mode": mode, "batch": b, "device": torch.cuda.get_device_name() if dev.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)", "images_per_s": round(b * steps_per_s, 2),
            "step_s": round(1 / steps_per_s, 4), "gflop_per_step": round(flops / 1e9, 2),
            "achieved_tflops": round(flops * steps_per_s / 1e12, 4), "peak_tflops": round(peak / 1e12, 4),
            "peak_source": source, "mfu": round(flops * steps_per_s / peak, 4),
            "precision": "bf16 autocast" if dev.type == "cuda" and cfg.train.precision in ("auto", "bf16") else "fp32",
            "fused_attention": bool(attn) and all(m.fused_attn for m in attn) if mode == "plain" else "off (vmap)",
            "fused_adamw": any(g.get("fused") for g in tr.optimizer.param_groups), "compiled": tr._compiled}


def main(argv: list[str] | None = None) -> int:
    import torch

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="vit-s,vit-b" if cuda else "cpu-tiny")
    ap.add_argument("--batch", default="" if cuda else "8", help="comma-separated batch sizes (empty: preset's)")
    ap.add_argument("--modes", default="plain,dp")
    ap.add_argument("--steps", type=int, default=20 if cuda else 3)
    ap.add_argument("--warmup", type=int, default=3 if cuda else 1)
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbones (plain mode)")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        preset, mode, batch = args.one.split(":")
        print(json.dumps(measure(preset, mode, int(batch), args.steps, args.warmup, args.device, args.compile)))
        return 0
    rows = []
    for preset in args.presets.split(","):
        for batch in (args.batch.split(",") if args.batch else ["0"]):
            for mode in args.modes.split(","):
                cmd = [sys.executable, __file__, "--one", f"{preset}:{mode}:{batch}", "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--device", args.device] + (["--compile"] if args.compile else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                      env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                          filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
                    rows.append({"preset": preset, "mode": mode, "batch": batch, "error": tail})
                else:
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"{'preset':<10}{'mode':<7}{'batch':>6}{'img/s':>10}{'GFLOP/step':>12}{'TFLOP/s':>10}{'MFU':>8}  device")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:<10}{r['mode']:<7}{r['batch']:>6}  failed: {r['error']}")
            continue
        print(f"{r['preset']:<10}{r['mode']:<7}{r['batch']:>6}{r['images_per_s']:>10.1f}{r['gflop_per_step']:>12.1f}"
              f"{r['achieved_tflops']:>10.3f}{100 * r['mfu']:>7.1f}%  {r['device']}")
    peaks = sorted({r["peak_source"] for r in rows if "peak_source" in r})
    for p in peaks:
        print(f"peak: {p}")
    print("MFU = model FLOPs per step (FlopCounterMode) x steps/s / peak; target on GPU (bf16): >= 40 %")
    result = {"rows": rows, "cuda": cuda}
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
