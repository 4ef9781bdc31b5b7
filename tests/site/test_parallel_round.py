"""A site's local round on 2 data-parallel gloo processes (node config ``gpus = 2``; D16): the same shared
weights as one process, the ledger reserved and committed once per round under DP, and a failed rank leaves the
round charged, not committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xr0_core.config import from_flat
from xr0_core.privacy.ledger import PrivacyLedger
from xr0_core.site.policy import SitePolicy, load_policy, policy_path, save_policy, with_values
from xr0_core.train.round_state import RoundSpec
from xr0_core.ssl.factory import initial_shared_state

from tests.tiny import PER_SAMPLE, SMALLER, tiny_flat
from tests.train.toydata import write_toy_site

# The per-sample objective (frozen centers, no KoLeo, no drop-path): the one data parallelism reproduces exactly.
CFG = tiny_flat(**SMALLER, **PER_SAMPLE, **{"train.local-steps": 2, "train.image-cache": "ram"})
DP = {"privacy.enabled": True, "privacy.noise-multiplier": 1.0}
ATOL, RTOL = 2e-5, 1e-4  # float summation order across ranks, two AdamW steps


@pytest.fixture(scope="module")
def site_images(tmp_path_factory):
    from xr0_core.data.dataset import ssl_records
    from xr0_core.data.index import index_site

    root = write_toy_site(tmp_path_factory.mktemp("site") / "h", 10, seed=3, size=40)
    return ssl_records(index_site(root, None, verify_pixels=False).records)


def _images(cfg, records):
    from xr0_core.data.source import open_site_images

    return open_site_images(cfg, records, None)


def _spec(cfg, rnd=1):
    steps = cfg.train.local_steps
    return RoundSpec(rnd, (rnd - 1) * steps, 2 * steps, steps, "par")


def _budget_policy(state: Path) -> SitePolicy:
    return save_policy(with_values(load_policy(policy_path(state)), {"privacy.budget": 50.0, "privacy.delta": 1e-5,
                                                                    "release.epsilon": "exact"}),
                       policy_path(state))


def _leftovers(state: Path) -> list[Path]:
    return list(state.glob(".xr0-parallel-round-*"))


@pytest.mark.slow  # torchrun
def test_two_processes_train_the_same_shared_weights_as_one(tmp_path, site_images):
    from xr0_core.site.round import run_parallel_site_round, run_site_round, site_trainer

    cfg = from_flat(CFG)
    start = initial_shared_state(cfg)
    one_state, two_state = tmp_path / "one", tmp_path / "two"
    trainer = site_trainer(cfg, site_images, site="h", cache=_images(cfg, site_images))
    one, m1 = run_site_round(trainer, start, _spec(cfg), one_state, SitePolicy())
    two, m2 = run_parallel_site_round(cfg, _images(cfg, site_images), start, _spec(cfg), two_state, SitePolicy(),
                                      site="h", workers=2)
    assert set(one) == set(two)
    for k in one:
        assert torch.allclose(two[k], one[k], atol=ATOL, rtol=RTOL), k
    assert any(not torch.allclose(start[k], one[k]) for k in one)  # the round trained
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    # rank 0 saved the site's state of this round where the next round (one or two processes) finds it
    assert (two_state / "ssl" / "par" / "round-00001.safetensors").is_file()
    assert not _leftovers(two_state)  # the private inputs folder is gone


@pytest.mark.slow  # torchrun
def test_private_round_on_two_processes_charges_the_ledger_once(tmp_path, site_images):
    from xr0_core.site.round import run_parallel_site_round

    cfg = from_flat({**CFG, **DP})
    policy = _budget_policy(tmp_path)
    shared, metrics = run_parallel_site_round(cfg, _images(cfg, site_images), initial_shared_state(cfg),
                                              _spec(cfg), tmp_path, policy, site="h", workers=2)
    releases = PrivacyLedger(tmp_path).read().releases
    assert len(releases) == 1  # one reservation for the site, not one per process
    r = releases[0]
    assert (r.run_id, r.round, r.steps, r.status) == ("par", 1, cfg.train.local_steps, "committed")
    assert r.sample_rate == pytest.approx(cfg.train.batch_size / 10)  # q of the whole site's units
    assert metrics["dp-steps"] == cfg.train.local_steps
    assert metrics["epsilon"] == pytest.approx(PrivacyLedger(tmp_path).epsilon(delta=1e-5), rel=1e-9)
    assert "loss" not in metrics  # what leaves under DP is the same as from one process


@pytest.mark.slow  # torchrun
def test_failed_rank_raises_and_leaves_the_round_charged_not_committed(tmp_path, site_images):
    from xr0_core.site.launch.parallel import ParallelRoundError
    from xr0_core.site.round import run_parallel_site_round

    cfg = from_flat({**CFG, **DP})
    policy = _budget_policy(tmp_path)
    weights = initial_shared_state(cfg)
    weights["not-a-parameter"] = torch.zeros(1)  # every rank's strict load fails after the reservation
    with pytest.raises(ParallelRoundError, match="data-parallel round on 2 processes failed"):
        run_parallel_site_round(cfg, _images(cfg, site_images), weights, _spec(cfg), tmp_path, policy, site="h",
                                workers=2)
    releases = PrivacyLedger(tmp_path).read().releases
    assert [r.status for r in releases] == ["pending"]  # counted in full, never committed as trained
    assert not (tmp_path / "ssl" / "par").exists()
    assert not _leftovers(tmp_path)


def test_process_count_refusals_come_before_any_charge(tmp_path, monkeypatch):
    import xr0_core.runtime
    from xr0_core.site.launch.parallel import ParallelRoundError, check_workers

    cfg = from_flat(CFG)
    with pytest.raises(ParallelRoundError, match="batch-size 4 must be a multiple of node config gpus = 3"):
        check_workers(cfg, 3, private=False)
    check_workers(cfg, 3, private=True)  # under DP whole units are shared unevenly: allowed
    with pytest.raises(ParallelRoundError, match="whole number"):
        check_workers(cfg, 0, private=False)
    monkeypatch.setattr(xr0_core.runtime, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ParallelRoundError, match=r"gpus = 2 but this machine shows 1 CUDA device"):
        check_workers(cfg, 2, private=False)


def test_records_survive_the_trip_to_the_ranks(site_images):
    from dataclasses import replace

    from xr0_core.site.launch.parallel import record_from_json, record_to_json

    rec = replace(site_images[0], labels={"fracture": 1}, landmarks=((1.0, 2.5),),
                  boxes=({"phrase": "nodule", "box": (1, 2, 3, 4)},), mask_path=Path("/m.png"))
    back = record_from_json(json.loads(json.dumps(record_to_json(rec))))
    assert back == rec and back.boxes == rec.boxes
