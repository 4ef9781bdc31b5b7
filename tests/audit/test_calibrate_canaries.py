"""Offline LiRA calibration, the canary coins in the state folder, and the policy keys of the audit."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from tests.privacy.dpdata import Rec
from xr0_core.audit import stats
from xr0_core.audit.calibrate import offline_lira
from xr0_core.audit.canaries import CanaryError, canary_path, ensure_canaries, read_canaries, without_left_out
from xr0_core.audit.run import site_membership
from xr0_core.site.policy import PolicyError, SitePolicy, with_values


def test_offline_lira_removes_per_patient_difficulty():
    # Each patient has a difficulty d that any model's score carries; membership adds 0.5 on the target only.
    rng = np.random.default_rng(0)
    p = 200
    d = rng.normal(0, 3, p)
    member = rng.random(p) < 0.5
    target = d + 0.5 * member + rng.normal(0, 0.1, p)
    refs = d[None] + rng.normal(0, 0.1, (4, p))  # references trained without these patients
    out = np.ones((4, p), bool)
    raw, cal = stats.auroc(target, member), stats.auroc(offline_lira(target, refs, out), member)
    assert raw < 0.65 and cal > 0.95
    # a reference that trained on a patient is not used for it
    refs_in = refs.copy()
    refs_in[0, member] += 0.5
    out_in = out.copy()
    out_in[0, member] = False
    assert stats.auroc(offline_lira(target, refs_in, out_in), member) > 0.95
    with pytest.raises(ValueError, match="excludes"):
        offline_lira(target, refs, np.zeros_like(out))


def _records(n):
    return [Rec(f"img{i}.png", f"p{i // 2}") for i in range(2 * n)]  # two images per patient


def test_canaries_are_drawn_once_kept_secret_and_left_out_whole(tmp_path):
    records = _records(20)
    first = ensure_canaries(tmp_path, records, 8, rng=np.random.default_rng(1))
    path = canary_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first.units) == 8
    # the next round reads the same coins (never redrawn), whatever generator it would use
    again = ensure_canaries(tmp_path, records, 8, rng=np.random.default_rng(99))
    assert again.units == first.units and again.included == first.included
    kept = without_left_out(records, again)
    left = first.left_out
    assert left and all(r.patient_id not in left for r in kept)
    assert len(records) - len(kept) == 2 * len(left)  # both images of each left-out patient
    with pytest.raises(CanaryError, match="cannot be redrawn"):
        ensure_canaries(tmp_path, records, 6)
    assert json.loads(path.read_text())["canaries"][0]["unit"] == first.units[0]
    with pytest.raises(CanaryError, match="at most"):
        ensure_canaries(tmp_path / "other", records, 21)
    assert read_canaries(tmp_path / "none") is None and ensure_canaries(tmp_path / "none", records, 0) is None


def test_left_out_canaries_are_non_members_and_trained_ones_members(tmp_path):
    records = _records(10)
    canaries = ensure_canaries(tmp_path, records[:16], 6, rng=np.random.default_rng(2))
    held = [Rec("t1.png", "h1"), Rec("t2.png", "h2")]
    m = site_membership(records, held, canaries)  # the training side before the canaries are left out
    coin = canaries.coin()
    assert set(coin) <= set(m.units) and int(m.canary.sum()) == 6
    for unit, member, is_canary in zip(m.units, m.members, m.canary):
        if unit in coin:
            assert is_canary and member == coin[unit]
        else:
            assert not is_canary and member == (unit not in ("h1", "h2"))


def test_policy_keys_of_the_audit():
    policy = with_values(SitePolicy(), {"privacy.audit-canaries": "12", "release.audit": "false"})
    assert policy.privacy.audit_canaries == 12
    assert not policy.eval_metric_allowed("audit/epsilon-lower") and policy.eval_metric_allowed("classification/x")
    assert SitePolicy().eval_metric_allowed("audit/epsilon-lower")
    with pytest.raises(PolicyError, match="audit-canaries"):
        with_values(SitePolicy(), {"privacy.audit-canaries": -1})
