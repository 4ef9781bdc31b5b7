"""Stop and resume under DP (issue 22, row 1): a hospital that learns its run has stopped ends the round at its
next check, sends nothing and withdraws the round's reservation (nothing of it left the site or was saved);
the resumed run's same round is then charged once, within the run cap, and the ledger holds exactly the
releases that left."""

from __future__ import annotations

import pytest

from tests.privacy.dpdata import dp_cfg, patient_cache
from tests.privacy.ledgertools import site_with_budget
from xr0_core.privacy.ledger import STATUS_COMMITTED, STATUS_WITHDRAWN, PrivacyLedger
from xr0_core.site.round import RunStopped, run_site_round, site_trainer
from xr0_core.ssl.factory import initial_shared_state
from xr0_core.train.round_state import RoundSpec

ROUNDS = 3


def _states(state):
    return sorted((state / "ssl").rglob("round-*.safetensors")) if (state / "ssl").exists() else []


def _round(state, rnd, run_active=None, run="run-key", **policy):
    cfg = dp_cfg()
    steps = cfg.train.local_steps
    tr = site_trainer(cfg, [], site="h", cache=patient_cache([0, 0, 1, 2, 3, 4, 5, 6]))
    spec = RoundSpec(rnd, (rnd - 1) * steps, ROUNDS * steps, steps, run)
    pol = site_with_budget(state, 8.0, **{"privacy.run-cap": 3.0, **policy})
    return run_site_round(tr, initial_shared_state(cfg), spec, state, pol, run_active=run_active)


class StopsDuringTraining:
    """``run_active``: running at the round's first (fresh) check, stopped at the first check during training."""

    def __init__(self):
        self.asked: list[bool] = []

    def __call__(self, fresh: bool) -> bool:
        self.asked.append(fresh)
        return len(self.asked) == 1


@pytest.mark.slow  # trains a tiny DP model for a few rounds (seconds each on 2 cores)
def test_a_stop_during_training_withdraws_the_round_and_the_resume_charges_it_once(tmp_path):
    _round(tmp_path, 1)
    _round(tmp_path, 2)
    saved = _states(tmp_path)
    stop = StopsDuringTraining()
    with pytest.raises(RunStopped, match="stopped during training"):
        _round(tmp_path, 3, run_active=stop)
    assert stop.asked[0] is True and False in stop.asked[1:]  # asked afresh first, then at a training step
    led = PrivacyLedger(tmp_path)
    third = [r for r in led.read().releases if r.round == 3]
    assert [r.status for r in third] == [STATUS_WITHDRAWN] and "stopped during training" in third[0].note
    assert _states(tmp_path) == saved  # the stopped round saved no local state
    eps_two = led.epsilon(delta=1e-5, run_id="run-key")

    # The resumed run (same run key, round 3 again) trains and is charged exactly once, within its cap.
    _, metrics = _round(tmp_path, 3, run_active=lambda fresh: True)
    releases = led.read().releases
    counted = [(r.round, r.status) for r in releases if r.counts]
    assert counted == [(1, STATUS_COMMITTED), (2, STATUS_COMMITTED), (3, STATUS_COMMITTED)]
    run_eps = led.epsilon(delta=1e-5, run_id="run-key")
    assert eps_two < run_eps <= 3.0 * (1 + 1e-9)
    assert metrics["epsilon-run"] == pytest.approx(run_eps)  # the test policy releases epsilon exactly


def test_a_stopped_run_reserves_nothing(tmp_path):
    with pytest.raises(RunStopped, match="before training"):
        _round(tmp_path, 1, run_active=lambda fresh: False)
    led = PrivacyLedger(tmp_path)
    assert not led.exists() or led.read().releases == []
    assert _states(tmp_path) == []


def test_a_withdrawn_release_never_counts_and_a_committed_one_is_never_withdrawn(tmp_path):
    from xr0_core.privacy.ledger import Release

    led = PrivacyLedger(tmp_path)
    with led.transaction() as data:
        data.releases += [Release("r", 1, 1.0, 0.1, 10, 1e-5, status="pending"),
                          Release("r", 2, 1.0, 0.1, 10, 1e-5, status=STATUS_COMMITTED)]
    both = led.epsilon(delta=1e-5)
    assert led.withdraw("r", 1, "the run stopped") == 1
    assert led.withdraw("r", 2, "the run stopped") == 0  # committed: it left, it counts for ever
    assert 0 < led.epsilon(delta=1e-5) < both
    assert led.epsilon(delta=1e-5) == pytest.approx(PrivacyLedger(tmp_path).epsilon(delta=1e-5, run_id="r"))
