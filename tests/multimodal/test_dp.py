"""mXR-0 under patient-level DP: contrastive refused (naming captioning), captioning runs and is accounted."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from xr0_core.privacy.dp import BatchCoupledLossError, dp_objective_config
from xr0_core.site.round import site_trainer
from xr0_core.ssl.factory import build_model, initial_shared_state
from xr0_core.train.round_state import RoundSpec

from tests.multimodal.mmdata import paired_cache

DP = {"privacy.enabled": True, "train.local-steps": 2, "ssl.koleo-weight": 0.0}


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dp_refuses_contrastive_and_names_captioning(mm_cfg, kind):
    cfg = mm_cfg(**DP, **{"multimodal.contrastive": kind})
    with pytest.raises(BatchCoupledLossError, match="captioning") as err:
        dp_objective_config(cfg)
    assert "multimodal.contrastive" in str(err.value)
    with pytest.raises(BatchCoupledLossError, match="captioning"):
        site_trainer(cfg, [], site="h", cache=paired_cache(6))


def test_captioning_objective_is_per_sample(mm_cfg):
    """The whole DP objective (DINO + iBOT with frozen centers + captioning): sample i's loss in a batch equals
    its loss alone, so per-unit clipping bounds each patient's influence."""
    cfg = dp_objective_config(mm_cfg(**DP, **{"multimodal.contrastive": "none"}))
    model = build_model(cfg).eval()
    assert model.coupling == "per-sample"
    tr = site_trainer(cfg, [], site="h", cache=paired_cache(6))
    batch = tr.batch_maker().build(0, torch.arange(5))
    batch.pop("index")
    full = model(batch, 0.07)
    assert (full.parts["caption"] > 0).all()
    for i in range(5):
        alone = model({k: v[i:i + 1] for k, v in batch.items()}, 0.07)
        torch.testing.assert_close(alone.loss[0], full.loss[i], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_dp_captioning_round_runs_and_ledger_epsilon_reproduces_with_opacus(mm_cfg, tmp_path):
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    from xr0_core.privacy.ledger import PrivacyLedger
    from xr0_core.site.policy import load_policy, policy_path, save_policy, with_values
    from xr0_core.site.round import run_site_round

    policy = save_policy(with_values(load_policy(policy_path(tmp_path)), {"privacy.budget": 8.0, "privacy.delta": 1e-5,
                                                                       "release.epsilon": "exact"}),
                         policy_path(tmp_path))  # the hospital's own budget
    cfg = mm_cfg(**DP, **{"multimodal.contrastive": "none", "multimodal.caption-weight": 1.0,
                          "train.batch-size": 4})
    start = initial_shared_state(cfg)
    cache = paired_cache(8, patients=[0, 0, 1, 2, 3, 3, 4, 5])
    metrics = []
    for rnd in (1, 2):
        tr = site_trainer(cfg, [], site="h", cache=cache)
        shared, m = run_site_round(tr, start, RoundSpec(rnd, (rnd - 1) * 2, 4, 2, "dprun"), tmp_path, policy)
        metrics.append(m)
        assert shared.keys() == start.keys() and all(torch.isfinite(v).all() for v in shared.values())
        # The decoder moved (noised gradients reached it): captioning trained under DP.
        assert not torch.equal(shared["caption.out.weight"], start["caption.out.weight"])
        start = shared
    assert all(not k.startswith("loss") for m in metrics for k in m)  # un-noised losses stay at the site
    ledger = PrivacyLedger(tmp_path)
    releases = [dataclasses.asdict(r) for r in ledger.read().releases]  # Opacus's RDP on the ledger's records
    assert [r["round"] for r in releases] == [1, 2]
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=r["sample_rate"], noise_multiplier=r["noise_multiplier"], steps=r["steps"], orders=orders)
              for r in releases)
    expected = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0]
    assert metrics[1]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert 0 < metrics[0]["epsilon"] < metrics[1]["epsilon"] <= 8.0
    assert all(r["unit"] == "patient" for r in releases)
