"""A hospital's state folder as one JSON-able state for its own live page (``xr0 site dashboard``).

Read, never written::

    site.json              the hospital's identity (name, id)
    policy.toml            the policy in force (xr0_core/site/policy.py)
    privacy/ledger.json    every release of trained weights (xr0_core/privacy/ledger.py)
    audit.jsonl            one line per message that left the hospital (client/audit.py)

The ε and budget numbers are :func:`xr0_core.site.ledger_summary.ledger_summary`, the body of
``xr0 privacy --json``, so the page and the command never disagree. The policy is found without the
one-time migrations a training round writes (:func:`~xr0_core.site.ledger_summary.read_only_policy`).
Refusals are the replies that carried an error instead of weights (the audit log records their reason).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from xr0_core.dashboard.jsonsafe import read_json, stat_key
from xr0_core.run_events import JsonLinesTail

AUDIT_FILE = "audit.jsonl"  # client/audit.py writes it (the client layer; this module only reads the file)
IDENTITY_FILE = "site.json"
RECENT_AUDIT = 100  # newest audit entries kept for the page
MAX_REFUSALS = 300
CURVE_POINTS = 400  # ε-over-time points at most
MAX_RELEASES_SHOWN = 500


def epsilon_curve(data: Any, delta: float, accountant: str, points: int = CURVE_POINTS) -> dict[str, list[Any]]:
    """ε spent after each release that counts (release order = the order they were reserved; at most ``points``,
    evenly spaced, the last always included): ``{"time", "epsilon", "label"}``
    (:func:`xr0_core.privacy.ledger.epsilon_prefixes`)."""
    from xr0_core.privacy.ledger import epsilon_prefixes

    releases = [r for r in data.releases if r.counts]  # withdrawn ones never count (they stay listed)
    prefixes = epsilon_prefixes([r.history_entry() for r in releases], delta, accountant)
    if len(prefixes) > points:
        n = len(prefixes)
        keep = {round(i * (n - 1) / (points - 1)) for i in range(points)}
        prefixes = [p for j, p in enumerate(prefixes) if j in keep]
    out: dict[str, list[Any]] = {"time": [], "epsilon": [], "label": []}
    for i, eps in prefixes:
        r = releases[i]
        out["time"].append(r.time or None)
        out["epsilon"].append(eps)
        out["label"].append(f"run {r.run_id} round {r.round} ({r.status})")
    return out


def runs_table(data: Any, delta: float, accountant: str) -> list[dict[str, Any]]:
    """Per run id in the ledger (newest first): releases, rounds, pending ones, first / last time, and ε of that
    run's releases alone (what :meth:`PrivacyLedger.epsilon` gives with ``run_id``; the lifetime ε composes all
    runs)."""
    from xr0_core.privacy.ledger import epsilon_prefixes

    by: dict[str, list[Any]] = {}
    for r in data.releases:
        by.setdefault(r.run_id, []).append(r)
    rows = []
    for run_id, rel in by.items():
        times = [r.time for r in rel if r.time]
        counting = [r for r in rel if r.counts]
        rows.append({"run_id": run_id, "releases": len(rel), "rounds": sorted({r.round for r in rel}),
                     "pending": sum(r.status == "pending" for r in rel), "withdrawn": len(rel) - len(counting),
                     "first": min(times) if times else None, "last": max(times) if times else None,
                     "epsilon": (epsilon_prefixes([r.history_entry() for r in counting], delta, accountant)[-1][1]
                                 if counting else 0.0)})
    return sorted(rows, key=lambda r: r["last"] or 0, reverse=True)


def audit_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One audit line as the page shows it: when, what type, to which Flower run, the error if it was one,
    and what it carried (array count and bytes per array record, metric names and values)."""
    records = entry.get("records") or {}
    carried = []
    for name, rec in sorted(records.items()) if isinstance(records, dict) else []:
        if not isinstance(rec, dict):
            continue
        if rec.get("kind") == "arrays":
            arrays = rec.get("arrays") or {}
            carried.append({"record": name, "kind": "arrays", "count": len(arrays),
                            "bytes": sum(int(a.get("bytes", 0)) for a in arrays.values() if isinstance(a, dict))})
        else:
            values = rec.get("values") or {}
            carried.append({"record": name, "kind": rec.get("kind"), "count": len(values),
                            "values": values if len(values) <= 40 else None})
    run_id = entry.get("run_id")  # a Flower run id is a 64-bit integer: as text, or a browser rounds it
    return {"time": entry.get("time"), "message_type": entry.get("message_type"),
            "run_id": None if run_id is None else str(run_id),
            "error": entry.get("error"), "carried": carried}


class SiteView:
    """Follows one hospital's state folder; :meth:`state` is cached until one of its files changes.

    Parameters
    ----------
    state_dir : Path
        The hospital's ``state-dir`` (the SuperNode's node config).
    """

    kind = "site"

    def __init__(self, state_dir: str | Path) -> None:
        from xr0_core.site.policy import policy_path

        self.dir = Path(state_dir).expanduser().resolve()
        self.policy_path = policy_path(self.dir)
        self._audit = JsonLinesTail(self.dir / AUDIT_FILE)
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_AUDIT)
        self._refusals: deque[dict[str, Any]] = deque(maxlen=MAX_REFUSALS)
        self._count = 0
        self._by_type: Counter[str] = Counter()
        self._bytes = 0
        self._keys: dict[str, Any] = {}
        self._privacy: dict[str, Any] = {}
        self._state: dict[str, Any] | None = None
        self.version = 0  # +1 whenever a file changed and the state was rebuilt
        self._lock = threading.Lock()

    def _files(self) -> dict[str, Path]:
        return {"ledger": self.dir / "privacy" / "ledger.json", "policy": self.policy_path,
                "audit": self.dir / AUDIT_FILE, "identity": self.dir / IDENTITY_FILE}

    def state(self) -> dict[str, Any]:
        """The page's state plus ``version`` (changes with the files) and ``generated`` (unix seconds of the
        reading that built it)."""
        with self._lock:
            keys = {name: stat_key(path) for name, path in self._files().items()}
            if self._state is None or keys != self._keys:
                if keys["ledger"] != self._keys.get("ledger") or keys["policy"] != self._keys.get("policy"):
                    self._privacy = self._read_privacy()
                if keys["audit"] != self._keys.get("audit"):
                    self._read_audit()
                self._keys = keys
                self.version += 1
                self._state = {**self._build(), "version": self.version, "generated": time.time()}
            return self._state

    def _read_privacy(self) -> dict[str, Any]:
        """Ledger under the policy in force: the ``xr0 privacy --json`` numbers, ε over time, per run."""
        from xr0_core.privacy.ledger import PrivacyError, PrivacyLedger
        from xr0_core.site.ledger_summary import ledger_summary, read_only_policy
        from xr0_core.site.policy import PolicyError, to_toml

        try:
            policy, note = read_only_policy(self.dir)
            ledger = PrivacyLedger(self.dir)
            data = ledger.read()
            body = ledger_summary(ledger, data, policy)
            p = policy.privacy
            curve = epsilon_curve(data, p.delta, p.accountant)
            runs = runs_table(data, p.delta, p.accountant)
        except (PrivacyError, PolicyError) as exc:
            return {"error": str(exc)}
        n = len(body["releases"])
        body["releases_total"] = n
        body["releases"] = list(reversed(body["releases"][-MAX_RELEASES_SHOWN:]))  # newest first
        left = (p.budget - body["epsilon"]) if p.budget is not None else None
        run_cap = "all" if math.isinf(p.run_cap) else (p.run_cap or None)  # 0: not set
        return {"privacy": body, "budget_left": left, "run_cap": run_cap, "dp_required": p.dp_required,
                "curve": curve, "runs": runs,
                "policy": {"file": Path(policy.path).name if policy.path else None, "note": note,
                           "toml": to_toml(policy), "epsilon_release": policy.release.epsilon,
                           "secagg_required": policy.secagg.required,
                           "pinned_peers": len(policy.secagg.peer_keys)}}

    def _read_audit(self) -> None:
        new, reset = self._audit.read_new()
        if reset:
            self._recent.clear()
            self._refusals.clear()
            self._count, self._bytes = 0, 0
            self._by_type.clear()
        for entry in new:
            s = audit_summary(entry)
            self._count += 1
            self._by_type[str(s["message_type"])] += 1
            self._bytes += sum(c.get("bytes", 0) for c in s["carried"])
            self._recent.append(s)
            if s["error"]:
                self._refusals.append(s)

    def _build(self) -> dict[str, Any]:
        ident = read_json(self._files()["identity"])
        ident = ident if isinstance(ident, dict) else {}
        name = str(ident.get("name") or self.dir.name)
        return {"kind": "site", "title": f"XR-0 hospital: {name}",
                "site": {"name": name, "site_id": ident.get("site_id"), "created": ident.get("created"),
                         "state_dir": self.dir.name},
                **self._privacy,
                "audit": {"count": self._count, "by_type": dict(self._by_type), "array_bytes": self._bytes,
                          "recent": list(reversed(self._recent)), "bad_lines": self._audit.bad_lines},
                "refusals": list(reversed(self._refusals))}
