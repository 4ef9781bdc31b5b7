"""The audit scalars hospitals released (``audit/*`` evaluation metrics), per hospital, for the run report and the
model card: epsilon from the ledger (the hospital's last train reply), the empirical lower bounds, and per score
AUROC and TPR at low FPR with their 95 % intervals. Reads the coordinator's history only (what left the sites)."""

from __future__ import annotations

from typing import Any

from xr0_core.audit.stats import FPR_LEVELS

PREFIX = "audit/"


def score_names(metrics: dict[str, float]) -> list[str]:
    """Scores a site reported (``audit/<score>/auroc``)."""
    return sorted({k[len(PREFIX):].rsplit("/", 1)[0] for k in metrics
                   if k.startswith(PREFIX) and k.endswith("/auroc") and not k.startswith(PREFIX + "canary/")})


def audit_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per hospital that released audit scalars, from its latest evaluation reply that has them.

    Returns ``[{"site", "round", "epsilon_ledger", "epsilon_lower", "epsilon_canary", "scores": {name:
    {"auroc", "auroc_ci", "tpr": {fpr: (tpr, low, high)}}}}]`` (missing values None).
    """
    last_eps: dict[str, float] = {}
    latest: dict[str, tuple[int, dict[str, float]]] = {}
    for r in history:
        for s in r.get("sites", []):
            m = s.get("metrics") or {}
            if r.get("kind") == "train" and "epsilon" in m:
                last_eps[s["name"]] = float(m["epsilon"])
            if r.get("kind") == "evaluate" and any(k.startswith(PREFIX) for k in m):
                latest[s["name"]] = (int(r.get("round", 0)), m)
    rows = []
    for site in sorted(latest):
        rnd, m = latest[site]
        if m.get("audit/skipped"):
            rows.append({"site": site, "round": rnd, "skipped": True, "epsilon_ledger": last_eps.get(site),
                         "epsilon_lower": None, "epsilon_canary": None, "scores": {}})
            continue
        scores = {}
        for name in score_names(m):
            p = f"{PREFIX}{name}/"
            tpr = {}
            for f in FPR_LEVELS:
                key = f"{p}tpr-at-fpr-{f:g}"
                if key in m:
                    tpr[f] = (m[key], m.get(key + "-low"), m.get(key + "-high"))
            scores[name] = {"auroc": m[p + "auroc"], "auroc_ci": (m.get(p + "auroc-low"), m.get(p + "auroc-high")),
                            "tpr": tpr, "epsilon_lower": m.get(p + "epsilon-lower")}
        rows.append({"site": site, "round": rnd, "skipped": False, "epsilon_ledger": last_eps.get(site),
                     "epsilon_lower": m.get(PREFIX + "epsilon-lower"),
                     "epsilon_canary": m.get(PREFIX + "canary/epsilon-lower"), "scores": scores})
    return rows


def fmt(x: Any, digits: int = 2) -> str:
    return "" if x is None else f"{float(x):.{digits}f}"


def ci(x: Any, lo: Any, hi: Any, digits: int = 2) -> str:
    if x is None:
        return ""
    return f"{float(x):.{digits}f} [{fmt(lo, digits)}, {fmt(hi, digits)}]"
