"""A hospital state folder for the site-dashboard tests: a policy, a ledger with three releases over two runs
(one pending, one withdrawn), and an audit log with one weights reply and one refusal."""

from __future__ import annotations

import json
from pathlib import Path

from xr0_core.privacy.ledger import STATUS_PENDING, STATUS_WITHDRAWN, PrivacyLedger, Release
from xr0_core.site.policy import SitePolicy, policy_path, save_policy, with_values

FLOWER_RUN = 9129583261915662122  # above 2**53: a browser's number would round it


def hospital(state: Path, policy: bool = True) -> Path:
    if policy:
        save_policy(with_values(SitePolicy(), {"privacy.budget": 8.0, "privacy.delta": 1e-5}), policy_path(state))
    with PrivacyLedger(state).transaction() as ledger:
        ledger.releases += [Release("run-a", 1, 1.1, 0.3, 20, 1e-5, time=100.0, unit="patient"),
                            Release("run-a", 2, 1.1, 0.3, 20, 1e-5, time=200.0, unit="patient"),
                            Release("run-b", 1, 0.9, 0.3, 20, 1e-5, time=300.0, unit="patient",
                                    status=STATUS_PENDING),
                            Release("run-b", 2, 0.9, 0.3, 20, 1e-5, time=400.0, unit="patient",
                                    status=STATUS_WITHDRAWN)]
    lines = [{"time": "2026-01-01T00:00:00Z", "message_type": "train", "run_id": FLOWER_RUN, "error": None,
              "records": {"arrays": {"kind": "arrays", "arrays": {"w": {"bytes": 400, "dtype": "float32",
                                                                          "shape": [100], "sha256": "00"}}},
                          "metrics": {"kind": "metrics", "values": {"epsilon": 2.3, "num-examples": 1.0}}}},
             {"time": "2026-01-01T01:00:00Z", "message_type": "train", "run_id": FLOWER_RUN,
              "error": "site policy: privacy budget spent", "records": {}}]
    (state / "audit.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return state
