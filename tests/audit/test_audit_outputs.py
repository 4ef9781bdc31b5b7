"""The audit's outputs at the coordinator: the report's and the model card's "Privacy audit" section, per
hospital, from the scalars the hospitals released (the ledger's epsilon, the empirical lower bounds, AUROC and
TPR at 0.1 % / 1 % FPR with their intervals, the operating points on log axes); and the local audit.json /
roc.png of a hospital."""

from __future__ import annotations

import json

import numpy as np

from tests.report import fakerun
from xr0_core.audit.run import AuditResult, Membership, score_stats
from xr0_core.audit.site_audit import write_outputs
from xr0_core.report import write_report


def _result(separation: float, seed: int) -> AuditResult:
    """An audit of 60 member and 60 non-member patients whose scores differ by ``separation`` on average."""
    rng = np.random.default_rng(seed)
    members = np.arange(120) < 60
    scores = {name: rng.normal(0, 1, 120) + separation * members for name in ("ssl-loss", "nn-margin")}
    units = tuple(f"p{i:03d}" for i in range(120))
    return AuditResult(delta=1e-5, membership=Membership(units, members, np.zeros(120, bool)), calibration="test",
                       scores={k: score_stats(v, members, 1e-5, alpha=0.025, seed=seed) for k, v in scores.items()})


def _history_with_audit():
    hist = fakerun.history(dp=True)
    released = {}
    ev = hist[-1]
    for i, site in enumerate(ev["sites"]):
        res = _result(3.0 if i == 0 else 0.0, seed=i)  # site00 leaks, the others do not
        site["metrics"].update(res.flat_metrics())
        released[site["name"]] = res
    return hist, released


def test_report_and_model_card_show_each_hospitals_audit(tmp_path):
    hist, released = _history_with_audit()
    out = tmp_path / "run"
    write_report(out, fakerun.summary(dp=True), hist)
    html = (out / "report.html").read_text()
    assert "<h2>Privacy audit</h2>" in html and (out / "audit_roc.png").stat().st_size > 5_000
    leaky = released["site00"]
    assert leaky.epsilon_lower > 1 and released["site01"].epsilon_lower < leaky.epsilon_lower
    s = leaky.scores["ssl-loss"]
    # the numbers shown are the released ones, with their intervals
    assert f"{s.auroc:.2f} [{s.auroc_ci[0]:.2f}, {s.auroc_ci[1]:.2f}]" in html
    assert f"{leaky.epsilon_lower:.2f}" in html
    p = s.points[1]  # 1 % FPR
    assert f"{p.tpr:.3f} [{p.tpr_ci[0]:.3f}, {p.tpr_ci[1]:.3f}]" in html
    # the ledger's epsilon of each hospital (its last train reply) stands next to its lower bound
    last_eps = {x["name"]: x["metrics"]["epsilon"] for x in hist[-2]["sites"]}
    assert all(f"{e:.2f}" in html for e in last_eps.values())

    card = (out / "model_card.md").read_text()
    section = card.split("### Privacy audit", 1)[1].split("##", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| site")]
    assert len(rows) == 3 * 2  # three hospitals, two scores each
    site00 = [r for r in rows if r.startswith("| site00 ") and "| ssl-loss |" in r]
    assert len(site00) == 1 and f"{s.auroc:.3f} [{s.auroc_ci[0]:.3f}, {s.auroc_ci[1]:.3f}]" in site00[0]
    assert f"| {leaky.epsilon_lower:.3f} |" in site00[0] and f"| {last_eps['site00']:.3f} |" in site00[0]
    assert f"{p.tpr:.3f} [{p.tpr_ci[0]:.3f}, {p.tpr_ci[1]:.3f}]" in site00[0]


def test_no_audit_no_section(tmp_path):
    out = tmp_path / "run"
    write_report(out, fakerun.summary(dp=True), fakerun.history(dp=True))
    assert "Privacy audit" not in (out / "report.html").read_text()
    assert "Privacy audit" not in (out / "model_card.md").read_text()
    assert not (out / "audit_roc.png").exists()


def test_the_local_outputs_hold_the_roc_and_the_counts(tmp_path):
    res = _result(3.0, seed=0)
    write_outputs(res, tmp_path)
    body = json.loads((tmp_path / "audit.json").read_text())
    assert body["members"] == 60 and body["non_members"] == 60 and body["unit"] == "patient"
    fpr, tpr = body["roc"]["ssl-loss"]["fpr"], body["roc"]["ssl-loss"]["tpr"]
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and len(fpr) == len(tpr) > 60
    assert body["epsilon_lower"] == res.epsilon_lower > 1
    assert (tmp_path / "roc.png").stat().st_size > 5_000
