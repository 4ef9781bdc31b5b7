"""A made-up federation history in the coordinator's format (metrics.json["rounds"]), for report tests that
must not run a federation: three hospitals, DP epsilon, secure-aggregation counts, per-step loss summaries,
one evaluation with per-hospital paired intervals."""

from __future__ import annotations

from typing import Any

SITES = ("site00", "site01", "site02")
LOCAL_STEPS = 6


def site_eval(i: int, gain: float) -> dict[str, float]:
    m = {"num-examples": 20.0 + i,
         "classification/anatomy/linear-accuracy": 0.8 + gain, "classification/anatomy/random/linear-accuracy": 0.8,
         "classification/anatomy/linear-macro-auroc": 0.9, "classification/anatomy/random/linear-macro-auroc": 0.85,
         "classification/anatomy/num-examples": 20.0 + i,
         "landmarks/joints/mre-px": 5.0 - gain * 10, "landmarks/joints/random/mre-px": 5.0,
         "landmarks/joints/num-examples": 8.0}
    for task, metric, diff in (("classification/anatomy", "linear-accuracy", gain),
                               ("landmarks/joints", "mre-px", -gain * 10)):
        se = 0.02 if metric != "mre-px" else 0.5
        m.update({f"{task}/ci/{metric}/diff": diff, f"{task}/ci/{metric}/low": diff - 2 * se,
                  f"{task}/ci/{metric}/high": diff + 2 * se, f"{task}/ci/{metric}/se": se,
                  f"{task}/ci/{metric}/units": 10.0 + i})
    return m


def history(dp: bool = False, secagg: bool = False, rounds: int = 3) -> list[dict[str, Any]]:
    out = []
    for r in range(1, rounds + 1):
        sites = []
        for i, name in enumerate(SITES):
            m: dict[str, float] = {"num-examples": 40.0, "partition-id": float(i), "train-seconds": 1.5}
            if dp:
                m.update({"epsilon": 0.9 * r + 0.1 * i, "epsilon-run": 0.9 * r, "privacy-budget": 8.0,
                          "privacy-run-cap": 4.0, "privacy-delta": 1e-5, "dp-steps": float(LOCAL_STEPS)})  # the whitelist a DP site releases
            else:
                m.update({"loss": 5.0 - 0.3 * r - 0.1 * i, **{f"loss-curve-{b:02d}": 5.2 - 0.3 * r - 0.05 * b - 0.1 * i
                                                             for b in range(LOCAL_STEPS)}})
            sites.append({"node_id": 100 + i, "status": "ok", "reason": "", "metrics": m, "name": name})
        agg = {"num-examples": 120.0}
        if not dp:
            agg["loss"] = 5.0 - 0.3 * r
        if secagg:
            agg.update({"secagg-uploads": 3.0, "secagg-dropped": 0.0, "secagg-clipped": 0.0, "secagg-threshold": 2.0,
                        "secagg-error-bound": 1.2e-4, "secagg-weight-capped": 0.0})
        out.append({"round": r, "kind": "train", "updated": True, "metrics": agg, "sites": sites, "seconds": 4.2})
    ev_sites = [{"node_id": 100 + i, "status": "ok", "reason": "", "metrics": site_eval(i, 0.05 * (i + 1)),
                 "name": name} for i, name in enumerate(SITES)]
    from strategies.eval_aggregate import pooled_metrics

    out.append({"round": rounds, "kind": "evaluate", "updated": False,
                "metrics": pooled_metrics([s["metrics"] for s in ev_sites]), "sites": ev_sites, "seconds": 3.0})
    return out


def summary(dp: bool = False, secagg: bool = False, rounds: int = 3) -> dict[str, Any]:
    return {"run_key": "abc123", "rounds_completed": rounds, "data_source": "synthetic",
            "backbone": {"timm_name": "vit_tiny_patch16_224", "timm_kwargs": {"img_size": 64}, "input": {"channels": 1},
                         "weights": "backbone.safetensors"},
            "sites": [{"name": n, "images": 48, "by_anatomy": {"chest": 20, "knee": 28 - i}, "scanner": ""}
                      for i, n in enumerate(SITES)],
            "config": {"preset": "cpu-tiny", "federation.rounds": rounds, "train.local-steps": LOCAL_STEPS, "seed": 0,
                       "privacy.enabled": dp, "secagg.enabled": secagg, "secagg.quant-range": 0.5,
                       "secagg.quant-bits": 32}}
