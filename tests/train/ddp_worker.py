"""One rank of the data-parallel equivalence test (run by torchrun from test_distributed.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.train.ddp_setup import STEPS, config, images
from xr0_core.train.distributed import init_from_env
from xr0_core.train.trainer import SiteTrainer


def main(out: str) -> int:
    torch.set_num_threads(1)
    ctx = init_from_env("gloo")
    assert ctx is not None and ctx.world_size == 2
    trainer = SiteTrainer(config(), [], site="s", cache=images())
    trainer.dist = ctx
    metrics = trainer.train(STEPS, start_step=0, total_steps=STEPS)
    if ctx.is_main:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in trainer.site_state_dict().items()}, str(Path(out) / "site.safetensors"))
        save_file(trainer.shared_state_dict(), str(Path(out) / "shared.safetensors"))
        (Path(out) / "metrics.json").write_text(json.dumps(metrics))
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
