"""DP-SGD across a site's data-parallel ranks (D3, D16): 2 gloo processes under torchrun release the same
gradients and train the same weights as one process on the same secret draw, and the noise is drawn once for
the global batch, not once per rank."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.privacy.dpdata import patient_cache
from tests.privacy.rankdp import ATOL, PATIENTS, Q, RTOL, SIGMA, STEPS, TINY_C, capture_grads, chosen_seed, config, unit_counts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp-ranks")
    from tests.torchrun import run_torchrun

    proc = run_torchrun(ROOT / "tests" / "privacy" / "dp_rank_worker.py", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow  # torchrun
def test_two_ranks_release_the_same_gradients_and_weights_as_one_process(ranks):
    from safetensors.torch import load_file

    from xr0_core.privacy.dp import dp_step
    from xr0_core.site.round import site_trainer
    from xr0_core.ssl.factory import build_model

    seed = chosen_seed()
    counts = unit_counts(seed)
    assert any(u % 2 for u in counts) and min(counts) <= 1  # unequal and empty shares happened
    single = site_trainer(config(), [], site="h", cache=patient_cache(PATIENTS))
    single.use_stepper(dp_step(single, noise_multiplier=SIGMA, sample_rate=Q, seed=seed))
    first = capture_grads(single)
    metrics = single.train(STEPS, start_step=0, total_steps=STEPS)

    g0, g1 = load_file(str(ranks / "grads-0.safetensors")), load_file(str(ranks / "grads-1.safetensors"))
    assert set(g0) == set(first)
    for k in first:
        assert torch.equal(g0[k], g1[k]), k  # every rank applies the identical update
        assert torch.allclose(g0[k], first[k], atol=1e-6, rtol=1e-4), k
    shared = load_file(str(ranks / "shared.safetensors"))
    one = single.shared_state_dict()
    for k in one:
        assert torch.allclose(shared[k], one[k], atol=ATOL, rtol=RTOL), k
    start = build_model(config()).shared_state_dict()
    assert any(not torch.allclose(start[k], one[k]) for k in one)  # training moved the weights
    dist_metrics = json.loads((ranks / "metrics.json").read_text())
    # the loss is the mean over the GLOBAL sampled units (all-reduced), whichever rank held them
    assert dist_metrics["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    facts = [json.loads((ranks / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [f["dp_steps"] for f in facts] == [STEPS, STEPS]  # each rank's DP step counts the site's steps once
    assert [f["noise_draws"] for f in facts] == [STEPS, 0]  # one noise draw per step for the whole site


@pytest.mark.slow  # torchrun
def test_noise_is_drawn_once_for_the_global_batch(ranks):
    """Secret sampling and noise, C tiny: the released gradient is the noise / (q n_units). Its per-coordinate
    std is sigma C / (q n_units); noise added by each of the two ranks would give sqrt(2) times that."""
    from safetensors.torch import load_file

    g0 = load_file(str(ranks / "secret-grads-0.safetensors"))
    g1 = load_file(str(ranks / "secret-grads-1.safetensors"))
    for k in g0:
        assert torch.equal(g0[k], g1[k]), k
    flat = torch.cat([v.double().flatten() for v in g0.values()])
    expected = SIGMA * TINY_C / (Q * len(set(PATIENTS)))
    assert flat.numel() > 10_000  # the std estimate is within ~1 % of the truth
    ratio = float(flat.std()) / expected
    assert abs(ratio - 1.0) < 0.05, ratio
    assert abs(ratio - math.sqrt(2)) > 0.3
    facts = [json.loads((ranks / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [f["secret_noise_draws"] for f in facts] == [1, 0]


def test_unit_shares_are_whole_contiguous_and_cover_every_unit():
    from xr0_core.train.distributed import DistContext, unit_share

    for world in (1, 2, 3, 4):
        for n in range(0, 9):
            shares = [unit_share(n, DistContext(r, world)) for r in range(world)]
            assert shares[0][0] == 0 and shares[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))  # contiguous, no unit twice
            sizes = [hi - lo for lo, hi in shares]
            assert max(sizes) - min(sizes) <= 1
    assert unit_share(1, DistContext(0, 2)) == (0, 0)  # fewer units than ranks: an empty share


def test_dp_step_built_before_the_group_is_refused():
    """A DP step built before ``trainer.dist`` was set would add noise on every rank: refused."""
    from xr0_core.privacy.dp import dp_step
    from xr0_core.site.round import site_trainer
    from xr0_core.train.distributed import DistContext

    tr = site_trainer(config(), [], site="h", cache=patient_cache(PATIENTS))
    tr.use_stepper(dp_step(tr, noise_multiplier=SIGMA, sample_rate=Q, seed=0))
    tr.dist = DistContext(0, 2)
    with pytest.raises(RuntimeError, match="set trainer.dist before building the DP step"):
        tr.train(1, start_step=0, total_steps=2)
