"""The site ledger: epsilon recomputed independently, survival across processes and runs, budget refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xr0_core.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger

from tests.privacy.dpdata import dp_cfg
from tests.privacy.ledgertools import independent_epsilon, private_round

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the xr0 command in a subprocess
def test_reported_epsilon_matches_opacus_on_the_ledger(tmp_path):
    _, m1 = private_round(tmp_path, "runa", 1)
    _, m2 = private_round(tmp_path, "runa", 2)
    out = subprocess.run([str(Path(sys.executable).parent / "xr0"), "privacy", "--state-dir", str(tmp_path),
                          "--json"], capture_output=True, text=True, cwd=REPO, check=True)
    ledger = json.loads(out.stdout)
    assert set(ledger) >= {"delta", "epsilon", "budget", "accountant", "releases"}
    assert [(r["run_id"], r["round"]) for r in ledger["releases"]] == [("runa", 1), ("runa", 2)]
    assert all(set(r) >= {"noise_multiplier", "sample_rate", "steps", "run_id", "round"} for r in ledger["releases"])
    expected = independent_epsilon(ledger["releases"], ledger["delta"])
    assert m2["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert ledger["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert 0 < m1["epsilon"] < m2["epsilon"] <= 8.0
    assert ledger["unit"] == "patient"


@pytest.mark.slow  # a process killed mid-round
def test_ledger_survives_a_killed_process_and_a_new_run(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from tests.privacy.ledgertools import private_round
        private_round(Path({str(tmp_path)!r}), "first", 1)
        os._exit(9)  # killed: no cleanup, no atexit
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO)
    assert proc.returncode == 9
    after_kill = PrivacyLedger(tmp_path).read()
    assert len(after_kill.releases) == 1
    eps1 = PrivacyLedger(tmp_path).epsilon(delta=1e-5)
    _, m = private_round(tmp_path, "second", 1)  # a new run in a new process state
    data = PrivacyLedger(tmp_path).read()
    assert [r.run_id for r in data.releases] == ["first", "second"]
    assert m["epsilon"] > eps1  # epsilon keeps accumulating across runs


def test_spent_budget_refuses_before_training(tmp_path):
    cfg = dp_cfg(**{"privacy.noise-multiplier": 0.6})
    _, m = private_round(tmp_path, "r", 1, cfg=cfg, budget=50.0)
    with pytest.raises(PrivacyBudgetExceeded, match=r"refuses to train"):
        private_round(tmp_path, "r", 2, cfg=cfg, budget=m["epsilon"] * 1.01)
    assert len(PrivacyLedger(tmp_path).read().releases) == 1  # the refused round released nothing


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_calibrated_noise_spends_at_most_the_budget_over_the_run(tmp_path):
    for rnd in (1, 2, 3):
        _, m = private_round(tmp_path, "cal", rnd, budget=3.0)
    assert m["epsilon"] == pytest.approx(3.0, rel=0.01) and m["epsilon"] <= 3.0 + 1e-9
    with pytest.raises(PrivacyBudgetExceeded):  # the next run finds the budget spent
        private_round(tmp_path, "next", 1, cfg=dp_cfg(**{"privacy.noise-multiplier": 1.0}), budget=3.0)


def test_dp_without_a_site_budget_refuses(tmp_path):
    from xr0_core.site.policy import PolicyRefusal

    with pytest.raises(PolicyRefusal, match="no privacy budget"):
        private_round(tmp_path, "r", 1, budget=None)


def test_losses_do_not_leave_a_dp_site(tmp_path):
    _, m = private_round(tmp_path, "r", 1)
    assert not any(k.startswith("loss") for k in m) and "epsilon" in m and "num-examples" in m
    # Neither the Poisson rate nor sigma leaves: together they give the site's patient count.
    assert "sample-rate" not in m and "noise-multiplier" not in m
    assert m["num-examples"] == 1.0  # the policy's declared weight (0 -> 1), not the site's image count
    from xr0_core.site.policy import DP_SAFE_TRAIN_METRICS

    assert set(m) <= set(DP_SAFE_TRAIN_METRICS), sorted(set(m) - set(DP_SAFE_TRAIN_METRICS))  # no timing, no count


def test_client_level_update_is_clipped_before_noise():
    import torch

    from xr0_core.privacy.client_dp import client_level_release

    old = {"a": torch.zeros(10), "b": torch.zeros(3, 3)}
    new = {"a": torch.full((10,), 5.0), "b": torch.ones(3, 3)}
    out, norm = client_level_release(new, old, clip=0.5, noise_multiplier=0.0, generator=torch.Generator())
    assert norm > 0.5
    assert float(torch.sqrt(sum(v.double().pow(2).sum() for v in out.values()))) == pytest.approx(0.5, rel=1e-6)


def test_client_level_release_is_recorded_with_sensitivity_2c(tmp_path):
    """Add/remove one patient moves a clipped update (norm <= C) by up to 2C: the ledger accounts the Gaussian
    release with sigma_c / 2. Checked against the Gaussian mechanism's RDP, alpha * (2C)^2 / (2 sigma_c^2 C^2),
    converted to epsilon here, independently of Opacus."""
    import math

    cfg = dp_cfg(**{"privacy.enabled": False, "privacy.client-level": True, "privacy.client-noise-multiplier": 2.0})
    _, m = private_round(tmp_path, "c", 1, cfg=cfg, budget=50.0)
    rel = PrivacyLedger(tmp_path).read().releases
    assert [(r.kind, r.noise_multiplier, r.sample_rate, r.steps, r.effective_sensitivity) for r in rel] == [
        ("client", 2.0, 1.0, 1, 2.0)]
    sigma_c, delta = 2.0, 1e-5
    from opacus.accountants.rdp import RDPAccountant

    best = math.inf
    for a in RDPAccountant.DEFAULT_ALPHAS:  # same orders, conversion of Balle et al. (2020) written out
        rdp = a * 4.0 / (2 * sigma_c ** 2)
        eps = rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    assert m["epsilon"] == pytest.approx(best, rel=1e-9)
    # The old accounting (sensitivity C) would have claimed a smaller epsilon:
    assert m["epsilon"] > independent_epsilon([{"sample_rate": 1.0, "noise_multiplier": 2.0, "steps": 1}], delta)


def test_epsilon_after_each_release_is_the_accounting_of_each_prefix():
    """The dashboard's ε-over-time curve (xr0_core/privacy/ledger.py: epsilon_prefixes): with RDP every prefix,
    each exactly epsilon_of of that prefix; with PRV a few prefixes, the whole history last."""
    import math

    from xr0_core.privacy.ledger import epsilon_of, epsilon_prefixes

    history = [(1.1, 0.3, 20), (1.1, 0.3, 0), (1.1, 0.3, 20), (0.9, 0.2, 10)]
    got = epsilon_prefixes(history, 1e-5)
    assert [i for i, _ in got] == [0, 1, 2, 3]
    assert [e for _, e in got] == [epsilon_of(history[:i + 1], 1e-5) for i in range(4)]
    assert got[0][1] == got[1][1] < got[2][1] < got[3][1]  # zero steps add nothing
    assert epsilon_prefixes([(0.0, 0.3, 5)] + history, 1e-5)[-1][1] == math.inf  # no noise: no privacy
    prv = epsilon_prefixes(history, 1e-5, "prv", points=2)
    assert [i for i, _ in prv] == [0, 3] and prv[-1][1] == epsilon_of(history, 1e-5, "prv")
