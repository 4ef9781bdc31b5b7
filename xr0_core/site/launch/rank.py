"""One rank of a site's data-parallel local round:
``python -m torch.distributed.run ... -m xr0_core.site.launch.rank FOLDER``
(launched by :func:`xr0_core.site.launch.parallel.launch_round`, which also documents FOLDER's files).

Every rank: join the group (nccl on CUDA with ``cuda:LOCAL_RANK``, gloo on CPU), reopen the site's images, load
the global weights and the site's state of this run, build the reserved DP-SGD step (the ranks agree on
rank 0's secrets), train. Rank 0 alone saves the site's state and writes the shared weights and metrics. The
ledger is never touched here: the launcher reserved the round and commits it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def rank_device(cfg) -> torch.device:
    """``cuda:LOCAL_RANK`` when the config trains on CUDA, else CPU."""
    from xr0_core.runtime import resolve_device

    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def run_rank(folder: Path) -> None:
    """Train this rank's share of the round described in ``folder`` (see :mod:`xr0_core.site.launch.parallel`)."""
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file

    from xr0_core.atomic import atomic_write
    from xr0_core.config import from_flat
    from xr0_core.site.launch.parallel import JOB, RESULT, SHARED, WEIGHTS, record_from_json, reopen_images
    from xr0_core.train.distributed import init_from_env
    from xr0_core.site.round import site_trainer
    from xr0_core.train.round_state import RoundSpec, save_round_state, start_round

    job = json.loads((folder / JOB).read_text())
    cfg = from_flat(job["run_config"])
    device = rank_device(cfg)
    ctx = init_from_env("nccl" if device.type == "cuda" else "gloo")
    if ctx is None:
        raise RuntimeError("xr0_core.site.launch.rank runs under torchrun with WORLD_SIZE >= 2")
    try:
        records = [record_from_json(r) for r in job["records"]]
        images = reopen_images(job["images"], records)
        trainer = site_trainer(cfg, records, site=job["site"], cache=images, device=device)
        trainer.dist = ctx  # before the DP step: its secrets and its optimizer are the group's
        spec = RoundSpec(**job["spec"])
        state_dir = Path(job["state_dir"])
        start_round(trainer, load_file(str(folder / WEIGHTS)), spec, state_dir)
        step = None
        if job["dp"] is not None:
            from xr0_core.privacy.private_round import reserved_dp_step

            dp = job["dp"]
            step = trainer.use_stepper(reserved_dp_step(trainer, float(dp["noise_multiplier"]),
                                                        float(dp["sample_rate"]), int(dp["n_units"])))
        metrics = trainer.train(spec.local_steps, start_step=spec.global_step, total_steps=spec.total_steps,
                                progress=bool(job["progress"]) and ctx.is_main)
        dp_steps = step.steps if step is not None else 0
        if ctx.is_main:
            save_round_state(trainer, spec, state_dir)
            shared = {k: v.contiguous() for k, v in trainer.shared_state_dict().items()}
            atomic_write(folder / SHARED, lambda tmp: save_file(shared, str(tmp)))
            # result.json last: its presence tells the launcher that rank 0 finished
            atomic_write(folder / RESULT, lambda tmp: Path(tmp).write_text(
                json.dumps({"metrics": metrics, "dp_steps": dp_steps, "world_size": ctx.world_size})))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m torch.distributed.run --nproc-per-node W -m xr0_core.site.launch.rank FOLDER",
              file=sys.stderr)
        return 2
    run_rank(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
