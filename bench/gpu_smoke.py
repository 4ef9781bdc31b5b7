"""The hospital's GPU paths, end to end on a CUDA device: what CI (CPU only) cannot run.

    python bench/gpu_smoke.py [--device cuda] [--json-out FILE]

For each DP route (``vmap``, ``microbatch``) and for plain training: a tiny site trainer on the device trains two
local steps through the code a hospital's round runs (``site_trainer`` -> ``dp_step`` -> ``SiteTrainer.train``),
and the per-unit gradients of the device are compared with the CPU's on the same batch (fp32, no autocast);
then every evaluation family runs with the backbone on the device. A
row fails with the exception's last line (a tensor left on the CPU shows up here, as it did in
``per_unit_grads_vmap`` before 2026-12-04). Prints one JSON object; exit status 1 if any row failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cache(n: int = 12):
    import numpy as np

    from tests.privacy.dpdata import patient_cache

    return patient_cache([i // 2 for i in range(n)], seed=0), np


def train_row(device: str, mode: str) -> dict:
    """Two local steps of a tiny site on ``device``; ``mode`` is plain or a DP route."""
    import torch

    from tests import tiny
    from xr0_core.privacy import dp
    from xr0_core.site.round import site_trainer

    over = {"train.device": device, "train.local-steps": 2, **tiny.PER_SAMPLE}
    if mode != "plain":
        over.update({"privacy.enabled": True, "privacy.grad-sample-mode": mode})
    cfg = tiny.tiny_cfg(**over)
    cache, _ = _cache()
    tr = site_trainer(cfg, [], site="gpu", cache=cache)
    before = {k: v.detach().cpu().clone() for k, v in tr.shared_state_dict().items()}
    if mode != "plain":
        tr.use_stepper(dp.dp_step(tr, noise_multiplier=1.0, seed=1))
    metrics = tr.train(2, start_step=0, total_steps=4)
    after = tr.shared_state_dict()
    moved = sum(not torch.equal(before[k], after[k].detach().cpu()) for k in before)
    finite = all(bool(torch.isfinite(v).all()) for v in after.values())
    on_device = {str(p.device) for p in tr.model.parameters()}
    ok = moved > 0 and finite and on_device == {str(torch.device(device, 0) if device == "cuda" else device)}
    return {"row": f"train-{mode}", "ok": ok, "tensors_moved": moved, "finite": finite,
            "param_devices": sorted(on_device), "loss": float(metrics.get("loss", float("nan")))}


def grads_row(device: str, mode: str) -> dict:
    """Per-unit gradients of route ``mode`` on ``device`` vs on the CPU, same weights and batch (fp32)."""
    import copy

    import torch

    from tests import tiny
    from xr0_core.data.dataset import BatchMaker
    from xr0_core.site.round import site_trainer
    from xr0_core.train.per_unit import GRAD_ROUTES

    cfg = tiny.tiny_cfg(**{"privacy.enabled": True, **tiny.PER_SAMPLE})
    cache, _ = _cache()
    tr = site_trainer(cfg, [], site="gpu", cache=cache)
    maker = BatchMaker(cache, cfg, site="gpu", patch_size=tr.model.patch_size)
    idx = torch.arange(8)
    batch = {k: v for k, v in maker.build(0, idx).items() if k != "index"}
    slots = idx // 2
    out = {}
    for dev in ("cpu", device):
        model = copy.deepcopy(tr.model).to(dev)
        model.train()
        with torch.random.fork_rng(devices=[0] if dev == "cuda" else []):
            torch.manual_seed(0)
            grads, loss = GRAD_ROUTES[mode](model, {k: v.to(dev) for k, v in batch.items()}, slots.to(dev), 4, 0.04)
        out[dev] = ({k: g.detach().double().cpu() for k, g in grads.items()}, loss.detach().double().cpu())
    (gc, lc), (gd, ld) = out["cpu"], out[device]
    rel = max(float((gc[k] - gd[k]).norm() / gc[k].norm().clamp(min=1e-12)) for k in gc)
    loss_diff = float((lc - ld).abs().max())
    return {"row": f"grads-{mode}", "ok": rel < 1e-2 and loss_diff < 1e-3, "max_rel_grad_diff": rel,
            "max_loss_diff": loss_diff}


def eval_row(device: str, _mode: str) -> dict:
    """Every evaluation family (backbone on ``device``, heads on the CPU) on a small synthetic hospital with
    every column; finite numbers for the pretrained and the random-init side, and the same numbers as the CPU's
    for a family whose heads are deterministic given the features (classification)."""
    import math
    import tempfile

    from xr0_core.config import from_flat
    from xr0_core.data.index import index_site
    from xr0_core.data.synthetic import write_federation
    from xr0_core.eval.suite import evaluate_backbone
    from xr0_core.ssl.factory import build_model

    with tempfile.TemporaryDirectory() as tmp:
        site = write_federation(Path(tmp), n_sites=1, images_per_site=36, seed=3, image_size=64)[0]
        records = index_site(site, verify_pixels=False).records
        cfg = from_flat({"eval.head-steps": 4, "eval.head-batch-size": 8, "eval.batch-size": 16,
                         "train.device": device})
        shared = build_model(from_flat({**cfg.to_flat(), "seed": 1})).shared_state_dict()
        result = evaluate_backbone(cfg, records, shared, device=device)
        cpu = evaluate_backbone(cfg, records, shared, device="cpu", tasks="classification")
    families = sorted({t.split("/")[0] for t in result.tasks})
    finite = all(math.isfinite(v) for side in (result.tasks, result.baseline_random) for m in side.values()
                 for v in m.values())
    cls = {t: m for t, m in result.tasks.items() if t.startswith("classification/")}
    diff = max((abs(m[k] - cpu.tasks[t][k]) for t, m in cls.items() for k in m if t in cpu.tasks), default=0.0)
    return {"row": "eval-all-families", "ok": finite and len(families) == 6 and diff < 0.05, "families": families,
            "finite": finite, "max_classification_diff_vs_cpu": diff}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    rows = []
    jobs = [(train_row, "plain"), (train_row, "vmap"), (train_row, "microbatch"), (grads_row, "vmap"),
            (grads_row, "microbatch"), (eval_row, "")]
    for fn, mode in jobs:
        try:
            rows.append(fn(args.device, mode))
        except Exception as exc:  # noqa: BLE001 -- a failing row is reported, the next one still runs
            rows.append({"row": f"{fn.__name__.split('_')[0]}-{mode}", "ok": False,
                         "error": f"{type(exc).__name__}: {exc}"[:400],
                         "where": traceback.format_exc().strip().splitlines()[-3][:300]})
        print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
              "torch": torch.__version__, "rows": rows, "ok": all(r["ok"] for r in rows)}
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
