"""Data-parallel training across a site's GPUs (D16): 2 gloo processes under torchrun train the same weights
as one process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.ddp_setup import ATOL, RTOL, STEPS, config, images

ROOT = Path(__file__).resolve().parents[2]
@pytest.mark.slow  # torchrun
def test_two_gloo_ranks_match_one_process(tmp_path):
    from safetensors.torch import load_file

    from xr0_core.train.trainer import SiteTrainer

    from tests.torchrun import run_torchrun

    proc = run_torchrun(ROOT / "tests" / "train" / "ddp_worker.py", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = SiteTrainer(config(), [], site="s", cache=images())
    metrics = single.train(STEPS, start_step=0, total_steps=STEPS)
    shared = load_file(str(tmp_path / "shared.safetensors"))
    site = load_file(str(tmp_path / "site.safetensors"))
    one = single.shared_state_dict()
    assert set(shared) == set(one)
    for k in one:
        assert torch.allclose(shared[k], one[k], atol=ATOL, rtol=RTOL), k
    # Teacher (EMA), committed centers and optimizer moments agree too.
    one_site = single.site_state_dict()
    for k in one_site:
        assert torch.allclose(site[k].double(), one_site[k].double(), atol=ATOL, rtol=RTOL), k
    dist_metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert dist_metrics["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    # Something was learned (the comparison is not between two untouched models).
    from xr0_core.ssl.factory import build_model

    start = build_model(config()).shared_state_dict()
    assert any(not torch.allclose(start[k], one[k]) for k in one)


def test_rank_blocks_equal_the_rows_of_the_global_batch():
    """Each rank builds views for its block only; with repeated indices (sampling with replacement) across the
    block boundary the blocks still equal the global batch's rows, and an uneven split is refused."""
    from xr0_core.data.dataset import BatchMaker
    from xr0_core.train.distributed import DistContext, RankBlocks

    cfg = config()
    maker = BatchMaker(images(), cfg, site="s", patch_size=8)
    crossed = 0
    for step in range(12):
        whole = maker(step, 8)
        blocks = [RankBlocks(maker, DistContext(r, 2))(step, 8) for r in (0, 1)]
        for k in ("global", "local", "masks", "index"):
            assert torch.equal(torch.cat([b[k] for b in blocks]), whole[k]), (step, k)
        first, second = whole["index"][:4].tolist(), whole["index"][4:].tolist()
        crossed += bool(set(first) & set(second))
    assert crossed  # some image occurred in both blocks: its repeat number came from the other rank's block
    with pytest.raises(ValueError, match="multiple of the 3 GPUs"):
        RankBlocks(maker, DistContext(0, 3))(0, 8)
