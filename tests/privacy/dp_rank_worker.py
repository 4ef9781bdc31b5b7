"""One rank of the DP-SGD-across-ranks tests (run by torchrun from test_dp_ranks.py).

Writes, per rank: ``grads-<r>.safetensors`` (the released gradient of the first seeded step),
``secret-grads-<r>.safetensors`` (the released gradient of one step with secret randomness and a tiny C),
``rank-<r>.json`` (noise draws, DP steps); rank 0 also ``shared.safetensors`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.privacy.dpdata import patient_cache
from tests.privacy.rankdp import PATIENTS, Q, SIGMA, STEPS, TINY_C, capture_grads, chosen_seed, config
from xr0_core.privacy.dp import dp_step
from xr0_core.site.round import site_trainer
from xr0_core.train.distributed import init_from_env


def main(out: str) -> int:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out_dir = Path(out)
    ctx = init_from_env("gloo")
    assert ctx is not None and ctx.world_size == 2
    r = ctx.rank

    # 1. seeded: the same sampling, views and noise as one process with the same seed
    trainer = site_trainer(config(), [], site="h", cache=patient_cache(PATIENTS))
    trainer.dist = ctx
    step = trainer.use_stepper(dp_step(trainer, noise_multiplier=SIGMA, sample_rate=Q, seed=chosen_seed()))
    first = capture_grads(trainer)
    metrics = trainer.train(STEPS, start_step=0, total_steps=STEPS)
    save_file(first, str(out_dir / f"grads-{r}.safetensors"))
    facts = {"noise_draws": step.optimizer.noise_draws, "dp_steps": step.steps}
    if ctx.is_main:
        save_file(trainer.shared_state_dict(), str(out_dir / "shared.safetensors"))
        (out_dir / "metrics.json").write_text(json.dumps(metrics))

    # 2. secret randomness (as in a real round), tiny C: the released gradient is the noise, drawn once
    secret = site_trainer(config(**{"privacy.max-grad-norm": TINY_C}), [], site="h", cache=patient_cache(PATIENTS))
    secret.dist = ctx
    secret_step = secret.use_stepper(dp_step(secret, noise_multiplier=SIGMA, sample_rate=Q))
    grads = capture_grads(secret)
    secret.train(1, start_step=0, total_steps=STEPS)
    save_file(grads, str(out_dir / f"secret-grads-{r}.safetensors"))
    facts["secret_noise_draws"] = secret_step.optimizer.noise_draws
    (out_dir / f"rank-{r}.json").write_text(json.dumps(facts))

    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
