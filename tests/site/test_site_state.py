"""A hospital's identity and state never follow its data path; DP evaluation never touches training patients."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.privacy.dpdata import dp_cfg
from tests.privacy.ledgertools import site_with_budget

from client.records import RoundInstruction
from client.runtime import evaluate_site, site_data, train_site
from client.site import SiteConfigError, resolve_site
from xr0_core.data.splits import private_partition, unit_of
from xr0_core.privacy.ledger import PrivacyLedger, Release
from xr0_core.site.policy import PolicyRefusal
from xr0_core.ssl.factory import initial_shared_state


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    from xr0_core.data.synthetic import write_federation

    root = tmp_path_factory.mktemp("one-hospital")
    return Path(write_federation(root, 1, 16, seed=3, image_size=64)[0])


def _instruction(cfg, rnd: int, run: str = "run1") -> RoundInstruction:
    steps = cfg.train.local_steps
    return RoundInstruction(rnd, (rnd - 1) * steps, 3 * steps, steps, cfg.seed, run, cfg.hash())


def test_deployment_without_state_dir_refuses_with_the_line_to_add(hospital):
    with pytest.raises(SiteConfigError, match=r"state-dir=\\?\"/var/lib/xr0/"):
        resolve_site({"data-path": str(hospital)}, dp_cfg())


def test_a_symlink_neither_renames_a_hospital_nor_moves_its_state(hospital, tmp_path):
    link = tmp_path / "mhh"
    link.symlink_to(hospital, target_is_directory=True)
    site = resolve_site({"data-path": str(link), "state-dir": str(tmp_path / "state")}, dp_cfg())
    assert site.name == "mhh" and site.data_dir == hospital.resolve()
    root = tmp_path / "fed"
    root.mkdir()
    (root / "mhh").symlink_to(hospital, target_is_directory=True)
    cfg = dp_cfg(**{"simulation.data-root": str(root), "simulation.state-root": str(tmp_path / "sites")})
    sim = resolve_site({"partition-id": 0}, cfg)
    assert sim.name == "mhh" and sim.state_dir == (tmp_path / "sites" / "mhh").resolve()


@pytest.mark.slow  # long: trains or evaluates for many seconds (the fast loop leaves it to the full suite)
def test_repointing_the_data_path_keeps_the_ledger(hospital, tmp_path):
    """The hospital re-exports its data to a new folder: epsilon already spent keeps counting."""
    cfg = dp_cfg()
    state = tmp_path / "state"
    site_with_budget(state, 8.0)
    copy = tmp_path / "new-export"
    shutil.copytree(hospital, copy)
    weights = initial_shared_state(cfg)
    site_a = resolve_site({"data-path": str(hospital), "state-dir": str(state)}, cfg)
    _, m1 = train_site(cfg, site_a, weights, _instruction(cfg, 1))
    site_b = resolve_site({"data-path": str(copy), "state-dir": str(state)}, cfg)
    _, m2 = train_site(cfg, site_b, weights, _instruction(cfg, 2))
    assert [r.round for r in PrivacyLedger(state).read().releases] == [1, 2]
    assert m2["epsilon"] > m1["epsilon"] > 0
    import json

    ident = json.loads((state / "site.json").read_text())
    assert ident["data_paths"] == [str(hospital.resolve()), str(copy.resolve())]


def _capture_eval_records(monkeypatch) -> list:
    seen: list = []

    class Result:
        skipped: list = []
        counts = {"classification/anatomy": 1}

        @staticmethod
        def flat_metrics():
            return {"classification/anatomy/knn-accuracy": 1.0}

    def fake(cfg, records, weights, strict=False):
        seen.extend(records)
        return Result()

    monkeypatch.setattr("xr0_core.eval.suite.evaluate_backbone", fake)
    return seen


def test_dp_evaluation_never_touches_a_training_patient(hospital, tmp_path, monkeypatch):
    cfg = dp_cfg()
    state = tmp_path / "state"
    site_with_budget(state, 8.0)
    site = resolve_site({"data-path": str(hospital), "state-dir": str(state)}, cfg)
    trained = {unit_of(r) for r in site_data(cfg, site, private=True).cache.records}
    seen = _capture_eval_records(monkeypatch)
    evaluate_site(cfg, site, initial_shared_state(cfg), _instruction(cfg, 3))
    evaluated = {unit_of(r) for r in seen}
    assert evaluated and trained and not evaluated & trained
    # Without DP the evaluation may use every labelled record (nothing to protect by the guarantee).
    seen.clear()
    plain = dp_cfg(**{"privacy.enabled": False})
    evaluate_site(plain, resolve_site({"data-path": str(hospital), "state-dir": str(tmp_path / "s2")}, plain),
                  initial_shared_state(plain), _instruction(plain, 3))
    assert {unit_of(r) for r in seen} > evaluated


def test_dp_evaluation_is_off_once_the_budget_is_spent_unless_the_policy_allows(hospital, tmp_path, monkeypatch):
    cfg = dp_cfg()
    state = tmp_path / "state"
    site_with_budget(state, 0.5)
    with PrivacyLedger(state).transaction() as data:
        data.releases.append(Release("spent", 1, 0.5, 0.5, 50, 1e-5, unit="patient"))
    site = resolve_site({"data-path": str(hospital), "state-dir": str(state)}, cfg)
    _capture_eval_records(monkeypatch)
    with pytest.raises(PolicyRefusal, match="budget is spent"):
        evaluate_site(cfg, site, initial_shared_state(cfg), _instruction(cfg, 3))
    site_with_budget(state, 0.5, **{"evaluation.after-budget-spent": True})
    assert evaluate_site(cfg, site, initial_shared_state(cfg), _instruction(cfg, 3))


def test_the_private_holdout_of_one_patient_does_not_depend_on_the_others():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class R:
        path: str
        patient_id: str
        split: str | None = None

    records = [R(f"{p}/{i}.png", f"p{p}") for p in range(60) for i in range(2)]
    train, held = private_partition(records, "site-key")
    assert held and train and not {unit_of(r) for r in train} & {unit_of(r) for r in held}
    grown = records + [R("new/0.png", "p-new")]
    train2, held2 = private_partition(grown, "site-key")
    assert {r.path for r in held2} - {"new/0.png"} == {r.path for r in held}
    assert private_partition(records, "other-site")[1] != held  # keyed by the site's stable id


def test_a_dicom_folder_without_manifest_uses_patient_id_as_the_unit(hospital, tmp_path):
    from xr0_core.data.index import index_site
    from xr0_core.privacy.units import privacy_units

    with_manifest = index_site(hospital, verify_pixels=False).records
    folder = tmp_path / "no-manifest"
    shutil.copytree(hospital, folder)
    (folder / "manifest.csv").unlink()
    walked = index_site(folder, verify_pixels=False).records
    dicoms = [r for r in walked if r.path.suffix == ".dcm"]
    assert dicoms and all(r.patient_id and r.patient_id.startswith("dicom-") for r in dicoms)
    by_name = {r.path.name: r.patient_id for r in with_manifest}
    # Same grouping as the manifest's patient ids; the identifier itself never appears (a pseudonym).
    groups_walked = {frozenset(r.path.name for r in dicoms if r.patient_id == p) for p in {r.patient_id for r in dicoms}}
    groups_manifest = {frozenset(r.path.name for r in dicoms if by_name[r.path.name] == by_name[d.path.name])
                       for d in dicoms}
    assert groups_walked == groups_manifest
    assert not any(by_name[r.path.name] in r.patient_id for r in dicoms)
    units = privacy_units(dicoms)
    assert units.kind == "patient" and units.n_units == len({r.patient_id for r in dicoms}) < len(dicoms)
