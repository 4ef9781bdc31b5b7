"""The hospital decides its privacy: each test is an attack by the coordinator (or a crash) that now fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xr0_core.cli import site as cli_site
from xr0_core.privacy.ledger import STATUS_COMMITTED, STATUS_PENDING, PrivacyBudgetExceeded, PrivacyLedger, Release
from xr0_core.privacy.reservation import NoiseAboveCap, RoundRequest, UnitMismatch, reserve_round
from xr0_core.site.policy import (
    PolicyError, PolicyRefusal, SitePolicy, load_policy, negotiate, policy_path, save_policy, with_values,
)

from tests.privacy.dpdata import dp_cfg, patient_cache
from tests.privacy.ledgertools import independent_epsilon, private_round, site_with_budget


def _ssl_states(state: Path) -> list[Path]:
    return sorted((state / "ssl").rglob("round-*.safetensors")) if (state / "ssl").exists() else []


# ------------------------------------------------------------------------------------------ the file
def test_policy_file_round_trips_and_refuses_bad_values(tmp_path):
    path = policy_path(tmp_path)
    policy = with_values(SitePolicy(), {"privacy.budget": "8", "secagg.required": "true",
                                        "release.train-metrics": "epsilon,num-examples"})
    save_policy(policy, path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    back = load_policy(path)
    assert back.privacy.budget == 8.0 and back.secagg.required and back.privacy.dp_required
    assert back.release.train_metrics == ("epsilon", "num-examples")
    with pytest.raises(PolicyError, match="privacy.accountant"):
        with_values(back, {"privacy.accountant": "gdp"})
    with pytest.raises(PolicyError, match="unknown policy key"):
        with_values(back, {"privacy.budgit": 3})
    path.write_text(path.read_text() + "\n[privacy2]\nx = 1\n")
    with pytest.raises(PolicyError, match="unknown section"):
        load_policy(path)


def test_site_policy_cli_sets_and_shows(tmp_path, capsys):
    from xr0_core.cli import run

    assert run(["site", "policy", "--state-dir", str(tmp_path), "--set", "privacy.budget=4",
                "--set", "privacy.run-cap=2", "--json"], [cli_site]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["privacy"]["budget"] == 4.0 and shown["privacy"]["run_cap"] == 2.0 and shown["dp_required"]
    assert load_policy(policy_path(tmp_path)).privacy.run_cap == 2.0


def test_node_config_budget_is_merged_stricter_wins(tmp_path):
    from xr0_core.site.state import site_policy

    assert site_policy(tmp_path, budget=8.0, delta=1e-5).privacy.budget == 8.0  # first use writes the policy
    assert site_policy(tmp_path, budget=12.0).privacy.budget == 8.0  # a larger node-config budget is ignored
    assert site_policy(tmp_path, budget=5.0, delta=1e-6).privacy.delta == 1e-6
    assert load_policy(policy_path(tmp_path)).privacy.budget == 5.0


# ------------------------------------------------------------------------------------------ attacks
def test_run_config_with_dp_off_at_a_site_with_a_budget_is_refused(tmp_path):
    cfg = dp_cfg(**{"privacy.enabled": False})
    with pytest.raises(PolicyRefusal, match="requires differential privacy"):
        private_round(tmp_path, "r", 1, cfg=cfg, budget=8.0)
    assert not PrivacyLedger(tmp_path).exists() and not _ssl_states(tmp_path)  # nothing trained, nothing saved


@pytest.mark.parametrize("override, policy, match", [
    ({"privacy.accountant": "gdp"}, {}, "gdp under-reports"),
    ({"privacy.accountant": "prv"}, {}, "accounts with rdp"),
    ({"privacy.target-delta": 0.5}, {}, "never a larger one"),
    ({"privacy.noise-multiplier": 40.0}, {}, "max-noise-multiplier"),
    ({"secagg.enabled": True, "secagg.threshold": 2}, {"secagg.min-threshold": 3}, "min-threshold"),
])
def test_run_config_asking_for_less_protection_is_refused(tmp_path, override, policy, match):
    with pytest.raises(PolicyRefusal, match=match):
        private_round(tmp_path, "r", 1, cfg=dp_cfg(**override), budget=8.0, **policy)
    assert not PrivacyLedger(tmp_path).exists()


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_run_config_may_ask_for_a_smaller_delta(tmp_path):
    _, m = private_round(tmp_path, "r", 1, cfg=dp_cfg(**{"privacy.target-delta": 1e-7}), budget=8.0)
    (rel,) = PrivacyLedger(tmp_path).read().releases
    assert rel.delta == 1e-7 and m["privacy-delta"] == 1e-7
    assert m["epsilon"] == pytest.approx(independent_epsilon([vars(rel)], 1e-7), rel=1e-9)


def test_plain_train_refused_when_the_policy_requires_secure_aggregation():
    from xr0_core.site.refusals import check_plain_round

    policy = with_values(SitePolicy(), {"secagg.required": True})
    with pytest.raises(PolicyRefusal, match="refuses a plain train"):
        check_plain_round(policy, None)
    with pytest.raises(PolicyRefusal, match="requires secure aggregation"):
        negotiate(policy, dp_cfg(**{"privacy.enabled": False}))
    negotiate(policy, dp_cfg(**{"privacy.enabled": False, "secagg.enabled": True}))  # asking for it is fine


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_two_overlapping_runs_cannot_exceed_the_budget(tmp_path):
    """Run A reserves its round, then run B plans while A's round is still training: B sees A's pending
    release. Interleaved to the end, the ledger never passes the budget and the late rounds are refused."""
    budget = 5.0
    site_with_budget(tmp_path, budget)
    terms = negotiate(load_policy(policy_path(tmp_path)), dp_cfg())
    refused, reserved = 0, 0
    for rnd in (1, 2, 3):
        for run in ("run-a", "run-b"):
            req = RoundRequest(run_id=run, server_round=rnd, local_steps=20, remaining_steps=(4 - rnd) * 20,
                               sample_rate=0.25, unit="patient", sample_level=True)
            try:
                reserve_round(tmp_path, terms, req)  # pending: neither run ever commits here (both "still training")
                reserved += 1
            except PrivacyBudgetExceeded:
                refused += 1
            eps = PrivacyLedger(tmp_path).epsilon(delta=1e-5, accountant="rdp")
            assert eps <= budget * (1 + 1e-9)
    assert reserved >= 3 and refused >= 1
    data = PrivacyLedger(tmp_path).read()
    assert all(r.status == STATUS_PENDING for r in data.releases)
    assert independent_epsilon([vars(r) for r in data.releases], 1e-5) <= budget * (1 + 1e-9)


def _crash_points():
    import xr0_core.site.round as site_round

    def boom(*_a, **_k):
        raise SystemExit("killed")

    return {
        "during training": lambda mp: mp.setattr("xr0_core.train.trainer.SiteTrainer.train", boom),
        "after training, before the state is saved": lambda mp: mp.setattr(site_round, "save_round_state", boom),
        "after the state is saved, before commit":
            lambda mp: mp.setattr("xr0_core.privacy.private_round.commit_round", boom),
        "after commit, before the reply": lambda mp: mp.setattr(site_round, "release_metrics", boom),
    }


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
@pytest.mark.parametrize("point", list(_crash_points()))
def test_a_kill_at_any_point_never_leaves_spent_steps_uncharged(tmp_path, monkeypatch, point):
    cfg = dp_cfg(**{"privacy.noise-multiplier": 1.5})
    with monkeypatch.context() as mp:
        _crash_points()[point](mp)
        with pytest.raises(SystemExit):
            private_round(tmp_path, "k", 1, cfg=cfg)
    (rel,) = PrivacyLedger(tmp_path).read().releases
    assert rel.round == 1 and rel.steps == cfg.train.local_steps  # the whole round is charged
    assert rel.status == (STATUS_COMMITTED if point == "after commit, before the reply" else STATUS_PENDING)
    # The next round may continue from whatever state the dead round saved: its steps are charged already.
    _, m = private_round(tmp_path, "k", 2, cfg=cfg)
    rels = PrivacyLedger(tmp_path).read().releases
    assert [r.round for r in rels] == [1, 2]
    assert m["epsilon"] == pytest.approx(independent_epsilon([vars(r) for r in rels], 1e-5), rel=1e-9)


def test_a_near_spent_budget_refuses_instead_of_training_on_noise(tmp_path):
    from xr0_core.privacy.ledger import calibrate_noise

    site_with_budget(tmp_path, 1.0)
    sigma = calibrate_noise([], sample_rate=0.1, steps=10, budget=0.99, delta=1e-5)
    with PrivacyLedger(tmp_path).transaction() as data:  # an earlier run spent almost everything
        data.releases.append(Release("earlier", 1, sigma, 0.1, 10, 1e-5, unit="patient"))
    spent = PrivacyLedger(tmp_path).epsilon(delta=1e-5, accountant="rdp")
    assert 0.9 < spent <= 0.99
    with pytest.raises(NoiseAboveCap, match="refuses to train on noise"):
        private_round(tmp_path, "late", 1, budget=1.0)
    assert len(PrivacyLedger(tmp_path).read().releases) == 1 and not _ssl_states(tmp_path)


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_the_per_run_cap_limits_one_run(tmp_path):
    cfg = dp_cfg(**{"privacy.noise-multiplier": 2.0})
    _, m1 = private_round(tmp_path, "capped", 1, cfg=cfg, budget=50.0)
    cap = {"privacy.run-cap": 1.2 * m1["epsilon"]}
    with pytest.raises(PrivacyBudgetExceeded, match="per-run cap"):
        private_round(tmp_path, "capped", 2, cfg=cfg, budget=50.0, **cap)  # twice the steps: above 1.2x
    _, m2 = private_round(tmp_path, "other", 1, cfg=cfg, budget=50.0, **cap)  # another run has its own cap
    led = PrivacyLedger(tmp_path)
    assert [(r.run_id, r.round) for r in led.read().releases] == [("capped", 1), ("other", 1)]
    assert led.epsilon(delta=1e-5, accountant="rdp", run_id="capped") == pytest.approx(m1["epsilon"])
    assert m2["epsilon"] > m1["epsilon"]  # the lifetime epsilon still composes both runs


def test_mixed_privacy_units_are_refused(tmp_path):
    image_units = patient_cache(list(range(8)))
    image_units.kept = [type(r)(r.path, None) for r in image_units.kept]  # no patient ids: image-level units
    private_round(tmp_path, "a", 1, cache=image_units)
    assert PrivacyLedger(tmp_path).read().releases[0].unit == "image"
    with pytest.raises(UnitMismatch, match="never mixes privacy units"):
        private_round(tmp_path, "b", 1)  # patient-level data now
    assert len(PrivacyLedger(tmp_path).read().releases) == 1


def test_policy_can_insist_on_patient_units(tmp_path):
    image_units = patient_cache(list(range(8)))
    image_units.kept = [type(r)(r.path, None) for r in image_units.kept]
    with pytest.raises(UnitMismatch, match="requires privacy.unit = 'patient'"):
        private_round(tmp_path, "a", 1, cache=image_units, **{"privacy.unit": "patient"})


# ------------------------------------------------------------------------------------------ randomness
def _with_extra_unit(base_patients, extra_images: int):
    """The same cache plus one more patient's images inserted in the middle (other images keep their paths)."""
    from tests.privacy.dpdata import Rec

    base = patient_cache(base_patients)
    extra = patient_cache([99] * extra_images, seed=7)
    mid = len(base_patients) // 2
    grown = patient_cache(base_patients)  # same pixels for the base images
    grown._images = torch.cat([base._images[:mid], extra._images, base._images[mid:]])
    grown.kept = (base.kept[:mid] + [Rec(f"new{i}.png", "p99") for i in range(extra_images)] + base.kept[mid:])
    return base, grown, mid


@pytest.mark.parametrize("route", ["microbatch", "vmap"])
def test_one_units_presence_changes_nothing_about_the_others(route):
    """Views, iBOT masks and per-unit gradients of every other unit are bit-identical with and without one
    extra patient in the batch (keyed by image path and a secret round seed, never by batch position)."""
    from xr0_core.data.dataset import BatchMaker
    from xr0_core.privacy.dp import dp_objective_config
    from xr0_core.train.per_unit import GRAD_ROUTES
    from xr0_core.ssl.factory import build_model

    cfg = dp_objective_config(dp_cfg(**{"model.drop-path": 0.0}))
    base, grown, mid = _with_extra_unit([0, 0, 1, 2, 3], extra_images=2)
    model = build_model(cfg)
    model.reset_teacher_from_student()
    secret = 1234567
    idx_b = torch.arange(len(base.kept))
    idx_g = torch.arange(len(grown.kept))
    kb = BatchMaker(base, cfg, site="h", patch_size=model.patch_size).build(5, idx_b, secret=secret)
    kg = BatchMaker(grown, cfg, site="h", patch_size=model.patch_size).build(5, idx_g, secret=secret)
    keep = torch.cat([torch.arange(mid), torch.arange(mid + 2, len(grown.kept))])
    for key in ("global", "local", "masks"):
        assert torch.equal(kb[key], kg[key][keep])
    slot_b = torch.tensor([0, 0, 1, 2, 3])
    slot_g = torch.tensor([0, 0, 4, 4, 1, 2, 3])  # the new patient is unit 4
    grads_b, _ = GRAD_ROUTES[route](model, {k: kb[k] for k in ("global", "local", "masks")}, slot_b, 4, 0.04)
    grads_g, _ = GRAD_ROUTES[route](model, {k: kg[k] for k in ("global", "local", "masks")}, slot_g, 5, 0.04)
    for name in grads_b:
        if route == "microbatch":
            assert torch.equal(grads_b[name], grads_g[name][:4]), name
        else:  # batched kernels may reorder float sums across the batch dimension
            torch.testing.assert_close(grads_b[name], grads_g[name][:4], rtol=1e-5, atol=1e-7, msg=name)


def test_dp_turns_the_presets_drop_path_off_and_refuses_another():
    from xr0_core.privacy.dp import BatchCoupledLossError, dp_objective_config

    assert dp_objective_config(dp_cfg(**{"preset": "vit-s"})).model.drop_path == 0.0
    with pytest.raises(BatchCoupledLossError, match="drop-path"):
        dp_objective_config(dp_cfg(**{"model.drop-path": 0.2}))


@pytest.mark.slow  # a process killed mid-round
def test_a_process_killed_mid_training_leaves_its_round_charged(tmp_path):
    """A real kill (os._exit, no cleanup) while the DP steps run: the reservation is already on disk."""
    import subprocess
    import sys
    import textwrap

    repo = Path(__file__).resolve().parents[2]
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(repo)!r})
        from pathlib import Path
        import xr0_core.train.trainer as state
        def die(self, *a, **k):
            os._exit(9)
        state.SiteTrainer.train = die
        from tests.privacy.ledgertools import private_round
        from tests.privacy.dpdata import dp_cfg
        private_round(Path({str(tmp_path)!r}), "killed", 1, cfg=dp_cfg(**{{"privacy.noise-multiplier": 1.5}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo)
    assert proc.returncode == 9
    (rel,) = PrivacyLedger(tmp_path).read().releases
    assert (rel.run_id, rel.status, rel.steps) == ("killed", STATUS_PENDING, 2)


def test_a_dp_step_that_samples_no_unit_is_a_step_not_an_error(tmp_path, monkeypatch):
    """Poisson sampling may draw nobody (secret randomness, small sites): the step still adds noise and is
    counted; it must not be mistaken for a diverged loss."""
    from xr0_core.privacy.units import PoissonUnitSampler

    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    monkeypatch.setattr(PoissonUnitSampler, "draw", lambda self: empty)
    _, m = private_round(tmp_path, "empty", 1, cfg=dp_cfg(**{"privacy.noise-multiplier": 1.0}))
    (rel,) = PrivacyLedger(tmp_path).read().releases
    assert rel.steps == 2 and rel.status == STATUS_COMMITTED and m["dp-steps"] == 2.0
