"""A hospital's state folder as its dashboard's state (xr0_core/dashboard/site_view.py): the numbers of
``xr0 privacy --json``, ε over time and per run from the ledger, refusals and the audit log, and nothing written."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from cli import main as xr0
from tests.dashboard.sitefixture import FLOWER_RUN, hospital as _hospital
from xr0_core.dashboard.site_view import SiteView
from xr0_core.privacy.ledger import PrivacyLedger, epsilon_of
from xr0_core.site.policy import policy_path


def _privacy_json(state) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert xr0(["privacy", "--state-dir", str(state), "--json"]) == 0
    return json.loads(buf.getvalue())


def _tree(root):
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_the_site_state_holds_the_numbers_of_xr0_privacy_json(tmp_path):
    state = _hospital(tmp_path / "site")
    st = SiteView(state).state()
    body = _privacy_json(state)
    assert st["privacy"]["epsilon"] == body["epsilon"]
    assert st["privacy"]["epsilon"] == PrivacyLedger(state).epsilon(delta=1e-5)  # pending release counted
    assert st["budget_left"] == pytest.approx(8.0 - body["epsilon"])
    assert (st["privacy"]["budget"], st["privacy"]["delta"], st["privacy"]["accountant"]) == (8.0, 1e-5, "rdp")
    assert st["privacy"]["releases"] == list(reversed(body["releases"]))  # newest first on the page
    runs = {r["run_id"]: r for r in st["runs"]}
    data = PrivacyLedger(state).read()
    assert runs["run-a"]["epsilon"] == epsilon_of([r.history_entry() for r in data.releases[:2]], 1e-5)
    assert runs["run-b"]["pending"] == 1 and runs["run-a"]["rounds"] == [1, 2]
    assert runs["run-b"]["withdrawn"] == 1 and runs["run-b"]["epsilon"] == epsilon_of([data.releases[2].history_entry()], 1e-5)
    curve = st["curve"]
    assert curve["epsilon"][-1] == body["epsilon"] and curve["epsilon"] == sorted(curve["epsilon"])
    assert curve["time"] == [100.0, 200.0, 300.0]  # the withdrawn release (t = 400) does not count


def test_refusals_and_the_audit_log_come_from_audit_jsonl(tmp_path):
    st = SiteView(_hospital(tmp_path / "site")).state()
    assert st["audit"]["count"] == 2 and st["audit"]["array_bytes"] == 400
    assert [r["error"] for r in st["refusals"]] == ["site policy: privacy budget spent"]
    newest, oldest = st["audit"]["recent"]
    assert newest["error"] and oldest["carried"][0] == {"record": "arrays", "kind": "arrays", "count": 1, "bytes": 400}
    assert oldest["carried"][1]["values"] == {"epsilon": 2.3, "num-examples": 1.0}
    assert oldest["run_id"] == str(FLOWER_RUN)  # exact, as text


def test_the_view_writes_nothing_even_where_a_round_would_migrate_the_policy(tmp_path):
    state = _hospital(tmp_path / "site", policy=False)
    with PrivacyLedger(state).transaction() as ledger:  # a ledger from before site policies: budget inside
        ledger.budget, ledger.delta = 6.0, 1e-5
    before = _tree(state)
    st = SiteView(state).state()
    assert _tree(state) == before and not policy_path(state).exists()
    assert st["privacy"]["budget"] == 6.0 and "moves into a policy file" in st["policy"]["note"]
    assert st["privacy"]["epsilon"] == _privacy_json(state)["epsilon"]  # (xr0 privacy migrates it: its job)


def test_a_missing_policy_beside_releases_is_shown_as_the_refusal_it_is(tmp_path):
    state = _hospital(tmp_path / "site", policy=False)
    st = SiteView(state).state()
    assert "missing" in st["error"] and "privacy" not in st


def test_the_view_follows_new_audit_lines(tmp_path):
    state = _hospital(tmp_path / "site")
    view = SiteView(state)
    v1 = view.state()["version"]
    with open(state / "audit.jsonl", "a") as fh:
        fh.write(json.dumps({"time": "t", "message_type": "evaluate", "run_id": 1, "error": None,
                             "records": {}}) + "\n")
    s2 = view.state()
    assert s2["version"] == v1 + 1 and s2["audit"]["count"] == 3 and s2["audit"]["by_type"] == {"train": 2, "evaluate": 1}
