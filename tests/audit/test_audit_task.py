"""The audit as an evaluation task: what leaves the hospital is the audit's scalars only, and nothing of it when
the site policy withholds them (release.audit = false)."""

from __future__ import annotations

import math
import re

import pytest

from client.records import RoundInstruction, metrics_reply_content
from client.runtime import evaluate_site
from client.site import Site
from tests import tiny
from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values
from xr0_core.ssl.factory import initial_shared_state

# every audit key that may leave: per-score rates with their intervals, and epsilon lower bounds
ALLOWED = re.compile(r"audit/((ssl-loss|ssl-consistency|nn-margin)/(auroc(-low|-high)?|tpr-at-fpr-0\.(001|01|1)"
                     r"(-low|-high)?|epsilon-lower)|epsilon-lower|canary/epsilon-lower)")


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    from xr0_core.data.synthetic import write_federation

    root = tmp_path_factory.mktemp("audit-site")
    return write_federation(root, n_sites=1, images_per_site=24, seed=5, image_size=48)[0]


def _evaluate(hospital, state, policy):
    cfg = tiny.tiny_cfg(**{"eval.audit": True, "eval.tasks": "probe", "eval.head-steps": 2})
    save_policy(policy, policy_path(state))
    site = Site(hospital.name, hospital, state)
    weights = initial_shared_state(cfg)
    instruction = RoundInstruction(3, 0, 1, 1, 0, "auditrun", cfg.hash())
    return evaluate_site(cfg, site, weights, instruction)


def test_the_audit_task_releases_only_its_scalars(hospital, tmp_path):
    out = _evaluate(hospital, tmp_path / "state", SitePolicy())
    audit = {k: v for k, v in out.items() if k.startswith("audit/")}
    assert "audit/epsilon-lower" in audit and "audit/ssl-loss/auroc" in audit
    bad = [k for k in audit if not ALLOWED.fullmatch(k)]
    assert not bad, f"unexpected audit keys would leave the site: {bad}"
    assert all(isinstance(v, float) and math.isfinite(v) for v in audit.values())
    # the reply is one MetricRecord of scalars: no arrays, no configs (no per-patient score, no curve)
    content = metrics_reply_content(out)
    assert not content.array_records and not content.config_records and len(content.metric_records) == 1
    # the full audit (ROC points, counts) stays at the site
    assert (tmp_path / "state" / "audit" / "round-0003" / "audit.json").is_file()


def test_a_policy_that_withholds_the_audit_sends_none_of_it(hospital, tmp_path):
    out = _evaluate(hospital, tmp_path / "state", with_values(SitePolicy(), {"release.audit": False}))
    assert not [k for k in out if k.startswith("audit/")]
    assert any(k.startswith("classification/") for k in out)  # the rest of the evaluation still leaves
