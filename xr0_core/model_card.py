"""The model card that travels with an exported backbone (D11): ``model_card.json`` + ``model_card.md``.

Built from the run summary and the coordinator's history only (what the coordinator legitimately knows):
hospitals, their image counts per anatomy when known (simulation), rounds, the last epsilon each DP hospital
reported, and the last federated evaluation next to its random-init baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xr0_core.atomic import atomic_write, atomic_write_json


def _ssl_health(history: list[dict[str, Any]]) -> dict[str, Any]:
    from xr0_core.train.health import assess_history

    v = assess_history(history)
    return {"status": v["status"], "sites": {n: {"status": s["status"], "reasons": s["reasons"]} for n, s in v["sites"].items()}}


def build_card(summary: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    train = [r for r in history if r["kind"] == "train"]
    evals = [r for r in history if r["kind"] == "evaluate"]
    sites: dict[str, dict[str, Any]] = {}
    for s in summary.get("sites") or []:
        sites[s["name"]] = {"images": s.get("images"), "by_anatomy": s.get("by_anatomy", {})}
    for r in train:
        for s in r["sites"]:
            entry = sites.setdefault(s["name"], {})
            entry["rounds_ok"] = entry.get("rounds_ok", 0) + (s["status"] == "ok")
            if "epsilon" in s["metrics"]:
                entry["epsilon"] = s["metrics"]["epsilon"]
                entry["delta"] = s["metrics"].get("privacy-delta")
            if s["status"] != "ok":
                entry["last_problem"] = f"round {r['round']}: {s['status']}: {s['reason']}"
    cfg = summary.get("config", {})
    return {
        "model": summary.get("backbone", {}),
        "preset": cfg.get("preset"),
        "rounds_completed": summary.get("rounds_completed"),
        "local_steps_per_round": cfg.get("train.local-steps"),
        "secure_aggregation": bool(cfg.get("secagg.enabled")),
        "differential_privacy": bool(cfg.get("privacy.enabled")),
        "sites": sites,
        "evaluation": {"round": evals[-1]["round"], "metrics": evals[-1]["metrics"]} if evals else None,
        "ssl_health": _ssl_health(history),
    }


def write_model_card(out_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    card = build_card(summary, history)
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "model_card.json", card)
    lines = ["# XR-0 federated backbone: model card", "",
             f"- preset `{card['preset']}`, rounds completed {card['rounds_completed']}, "
             f"local steps per round {card['local_steps_per_round']}",
             f"- secure aggregation: {card['secure_aggregation']}; differential privacy: {card['differential_privacy']}",
             "", "| hospital | images | anatomy mix | rounds ok | epsilon (delta) | last problem |",
             "|---|---|---|---|---|---|"]
    for name, s in sorted(card["sites"].items()):
        mix = ", ".join(f"{a} {n}" for a, n in sorted(s.get("by_anatomy", {}).items()))
        eps = f"{s['epsilon']:.3f} ({s.get('delta')})" if "epsilon" in s else "no DP"
        lines.append(f"| {name} | {s.get('images', '')} | {mix} | {s.get('rounds_ok', 0)} | {eps} | "
                     f"{s.get('last_problem', '')} |")
    if card["evaluation"]:
        lines += ["", f"Federated evaluation after round {card['evaluation']['round']} (example-weighted; "
                  "`random` = the random-init backbone measured in the same dispatch):", ""]
        lines += [f"- {k}: {v:.4g}" for k, v in sorted(card["evaluation"]["metrics"].items())
                  if isinstance(v, (int, float)) and ("anatomy" in k or k.count("/") <= 2)]
    path = out_dir / "model_card.md"
    atomic_write(path, lambda p: p.write_text("\n".join(lines) + "\n"))
    return path
