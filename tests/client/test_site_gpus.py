"""Node config ``gpus``: parsed and validated, and a site with gpus = W runs its round through the
data-parallel composition (the launch itself: tests/site/test_parallel_round.py)."""

from __future__ import annotations

import pytest
import torch

from client.records import RoundInstruction
from client.site import SiteConfigError, resolve_site
from xr0_core.config import from_flat


def _node(tmp_path, **more):
    return {"data-path": str(tmp_path / "xr"), "state-dir": str(tmp_path / "st"), **more}


def test_gpus_defaults_to_one_and_refuses_nonsense(tmp_path):
    cfg = from_flat()
    assert resolve_site(_node(tmp_path), cfg).gpus == 1
    assert resolve_site(_node(tmp_path, gpus=4), cfg).gpus == 4
    for bad in (0, -1, "two", 2.5, True):
        with pytest.raises(SiteConfigError, match="gpus"):
            resolve_site(_node(tmp_path, gpus=bad), cfg)


def test_a_site_with_gpus_runs_the_parallel_round_with_that_many_processes(tmp_path, monkeypatch):
    import client.runtime as runtime
    import xr0_core.site.round as site_round

    cfg = from_flat({"train.device": "cpu"})
    site = resolve_site(_node(tmp_path, gpus=2), cfg)
    cache = type("Images", (), {"kept": ["a", "b", "c"]})()
    monkeypatch.setattr(runtime, "site_data", lambda *a, **k: runtime.SiteData(["a", "b", "c"], cache))
    seen = {}

    def parallel(cfg_, images, weights, spec, state_dir, policy, *, site, workers, run_active=None):
        seen.update(images=images, workers=workers, state_dir=state_dir, spec=spec)
        return {"w": torch.ones(1)}, {"loss": 1.0}

    monkeypatch.setattr(site_round, "run_parallel_site_round", parallel)
    ins = RoundInstruction(2, 4, 8, 4, 0, "run", "h")
    shared, metrics = runtime.train_site(cfg, site, {"w": torch.zeros(1)}, ins)
    assert seen["workers"] == 2 and seen["images"] is cache and seen["state_dir"] == site.state_dir
    assert seen["spec"].server_round == 2 and seen["spec"].global_step == 4
    assert metrics["num-examples"] == 3 and torch.equal(shared["w"], torch.ones(1))
