"""Budgets that last (issue 22, row 3): a lifetime budget needs a per-run cap (or an explicit "all"), the noise
of a run is calibrated to its cap, and each release says what this run spent and may spend."""

from __future__ import annotations

import json
import math

import pytest

from cli import main
from xr0_core.privacy.ledger import PrivacyLedger, epsilon_of
from xr0_core.privacy.reservation import RoundRequest, reserve_round
from xr0_core.site.policy import (SitePolicy, load_policy, negotiate, policy_path, run_cap_advice, save_policy,
                                  with_values)
from xr0_core.site.round import release_metrics


def test_site_policy_refuses_a_budget_without_a_run_cap(tmp_path, capsys):
    state = tmp_path / "state"
    assert main(["site", "policy", "--state-dir", str(state), "--set", "privacy.budget=8"]) == 2
    err = capsys.readouterr().err
    assert "without privacy.run-cap" in err and "privacy.run-cap=2" in err and "privacy.run-cap=all" in err
    assert not policy_path(state).exists()  # nothing was written
    assert main(["privacy", "--state-dir", str(state), "--set-budget", "8"]) == 2
    assert "without privacy.run-cap" in capsys.readouterr().err and not policy_path(state).exists()


def test_run_cap_all_is_an_explicit_confirmation(tmp_path, capsys):
    state = tmp_path / "state"
    assert main(["site", "policy", "--state-dir", str(state), "--set", "privacy.budget=8",
                 "--set", "privacy.run-cap=all", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["privacy"]["run_cap"] == "all"
    assert 'run-cap = "all"' in policy_path(state).read_text()
    policy = load_policy(policy_path(state))
    assert policy.privacy.run_cap == math.inf and not policy.privacy.capped and not policy.privacy.run_cap_missing
    # Editing another key later keeps the confirmation; a budget with a sized cap is accepted too.
    assert main(["site", "policy", "--state-dir", str(state), "--set", "privacy.run-cap=2"]) == 0
    assert load_policy(policy_path(state)).privacy.capped


def test_a_hand_written_policy_without_a_cap_is_flagged_by_the_policy_command(tmp_path, capsys):
    state = tmp_path / "state"
    save_policy(with_values(SitePolicy(), {"privacy.budget": 8}), policy_path(state))  # not through the CLI
    assert main(["site", "policy", "--state-dir", str(state)]) == 0
    assert "warning: privacy.budget = 8 is set without privacy.run-cap" in capsys.readouterr().err
    assert "whole lifetime budget" in run_cap_advice(load_policy(policy_path(state)).privacy)


class _Cfg:
    """The run config fields :func:`negotiate` reads (a DP run, each site's own accountant and delta)."""

    class privacy:  # noqa: N801 - mirrors XR0Config.privacy
        enabled, client_level, accountant, target_delta, noise_multiplier = True, False, "", 0.0, 0.0
        client_noise_multiplier = 0.0

    class secagg:  # noqa: N801
        enabled, threshold = False, 0


def _first_reservation(tmp_path, run_cap):
    policy = with_values(SitePolicy(), {"privacy.budget": 8, "privacy.run-cap": run_cap})
    req = RoundRequest(run_id="run", server_round=1, local_steps=5, remaining_steps=20, sample_rate=0.1,
                       unit="patient", sample_level=True)
    return reserve_round(tmp_path, negotiate(policy, _Cfg), req)


def test_the_noise_of_a_run_is_calibrated_to_its_cap_not_to_the_lifetime_budget(tmp_path):
    capped = _first_reservation(tmp_path / "capped", 2)
    everything = _first_reservation(tmp_path / "all", "all")
    # Over the run's 20 steps the capped run spends (about) its cap, the "all" run the whole budget.
    assert epsilon_of([(capped.noise_multiplier, 0.1, 20)], 1e-5) == pytest.approx(2.0, rel=0.01)
    assert epsilon_of([(everything.noise_multiplier, 0.1, 20)], 1e-5) == pytest.approx(8.0, rel=0.01)
    assert capped.noise_multiplier > everything.noise_multiplier
    assert capped.effective_run_cap == 2.0 and everything.effective_run_cap == 8.0
    assert PrivacyLedger(tmp_path / "capped").read().runs["run"]["noise_multiplier"] == capped.noise_multiplier


def test_a_release_says_what_this_run_spent_and_may_spend():
    policy = with_values(SitePolicy(), {"privacy.budget": 8, "privacy.run-cap": 2})
    sent = release_metrics(policy, {"epsilon": 3.01, "epsilon-run": 1.01, "privacy-budget": 8.0,
                                    "privacy-run-cap": 2.0, "loss": 0.5}, private=True)
    assert sent["epsilon"] == pytest.approx(3.1) and sent["epsilon-run"] == pytest.approx(1.1)  # both rounded up
    assert sent["privacy-run-cap"] == 2.0 and "loss" not in sent
    withheld = with_values(policy, {"release.epsilon": "withheld"})
    sent = release_metrics(withheld, {"epsilon": 3.01, "epsilon-run": 1.01}, private=True)
    assert "epsilon" not in sent and "epsilon-run" not in sent and sent["epsilon-withheld"] == 1.0
