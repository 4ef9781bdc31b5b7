"""Did pretraining help? The statistics every report and model card read (D8, D17).

Flat evaluation keys (``<task>/<metric>``, ``<task>/random/<metric>``, ``<task>/pixels/<metric>``,
``<task>/ci/<metric>/<part>``) as hospitals send them, parsed, pooled across hospitals and judged:

- :func:`split_flat` / :func:`headline_metrics`: keys -> per (task, metric) values, one headline metric a task;
- :func:`site_intervals`: one hospital's paired bootstrap intervals (``<task>/ci/<metric>/{diff,low,high,se,units}``,
  scalars: nothing else leaves a hospital);
- :func:`pooled_interval`: the coordinator pools them stratified by hospital: difference = units-weighted mean of
  the hospitals' differences, standard error = sqrt(sum(w_i^2 se_i^2)), interval = difference +- 1.96 SE (one
  hospital: its own percentile interval);
- :func:`verdict` and :func:`summary_rows`: per task, better / worse / not shown, for the last evaluation.

Pages are written elsewhere (:mod:`xr0_core.report` for the run, :mod:`xr0_core.eval.evaluation_report` for
``xr0 evaluate``, :mod:`xr0_core.model_card` for the card); all of them read these functions.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

# The task families in report order (the task registry, xr0_core/eval/tasks, lists its modules in this order).
FAMILIES = ("classification", "retrieval", "segmentation", "landmarks", "grounding", "report_generation")
LOWER_IS_BETTER = ("mre-px", "mre-mm")  # metrics where a smaller number is the better model
Z95 = 1.959964
# Fewer patients than this (over all hospitals) and a bootstrap interval says more than the data: no verdict.
MIN_UNITS = 10
# Segments of the flat evaluation keys.
RANDOM_SEGMENT = "/random/"
PIXELS_SEGMENT = "/pixels/"  # <task>/pixels/<metric>: the raw-pixel baseline (xr0_core/eval/baseline.py)
CI_SEGMENT = "/ci/"  # <task>/ci/<metric>/<part> (xr0_core/eval/suite.py): read by the run report's summary
CI_PIXELS_SEGMENT = "/ci-pixels/"  # <task>/ci-pixels/<metric>/<part>: evaluated minus raw pixels
# The metric drawn per round for each family (the first one a task reports, in this order).
HEADLINE = ("linear-auroc", "linear-accuracy", "recall@1", "dice-mean", "mre-px", "mean-iou", "rouge-l", "bleu4")


def split_flat(metrics: dict[str, float]) -> dict[tuple[str, str], dict[str, float]]:
    """Flat evaluation keys -> ``{(task, metric): {"pretrained": v, "random": v, "pixels": v}}`` (other keys
    ignored; ``pixels`` only for the tasks the raw-pixel baseline applies to)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key, value in metrics.items():
        if (not key.startswith(FAMILIES) or key.endswith("/num-examples") or CI_SEGMENT in key
                or CI_PIXELS_SEGMENT in key):
            continue
        for segment, tag in ((RANDOM_SEGMENT, "random"), (PIXELS_SEGMENT, "pixels")):
            if segment in key:
                task, metric = key.rsplit(segment, 1)
                out.setdefault((task, metric), {})[tag] = value
                break
        else:
            task, metric = key.rsplit("/", 1)
            out.setdefault((task, metric), {})["pretrained"] = value
    return out


def is_task_key(key: str) -> bool:
    """Whether ``key`` is a downstream-evaluation metric (``<family>/...``)."""
    return key.startswith(tuple(f + "/" for f in FAMILIES))


def headline_metrics(keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """One (task, metric) per task: its first metric in :data:`HEADLINE` order."""
    by_task: dict[str, list[str]] = {}
    for task, metric in keys:
        by_task.setdefault(task, []).append(metric)
    out = []
    for task, metrics in sorted(by_task.items()):
        for m in HEADLINE:
            if m in metrics:
                out.append((task, m))
                break
    return out




def site_intervals(metrics: dict[str, float], segment: str = CI_SEGMENT) -> dict[str, dict[str, Any]]:
    """``<task>/ci/<metric>/<part>`` keys of one hospital -> ``{task: {"metric", "diff", "low", ...}}``.

    ``segment="/ci-pixels/"`` reads the intervals against the raw-pixel baseline instead of random init."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        if segment not in key:
            continue
        task, rest = key.split(segment, 1)
        metric, _, part = rest.rpartition("/")
        out.setdefault(task, {"metric": metric})[part] = value
    return {t: v for t, v in out.items() if {"diff", "se", "units"} <= set(v)}


def pooled_interval(per_site: list[dict[str, Any]]) -> dict[str, float]:
    """Stratified pooling of hospitals' paired intervals (module docstring); ``{"diff", "low", "high"}``."""
    per_site = [s for s in per_site if s.get("units", 0) > 0 and math.isfinite(s.get("diff", math.nan))]
    if not per_site:
        return {"diff": math.nan, "low": math.nan, "high": math.nan, "units": 0.0}
    total = sum(s["units"] for s in per_site)
    if any(s["units"] < 2 for s in per_site):  # one patient: resampling it gives no spread, not certainty
        diff = sum(s["units"] * s["diff"] for s in per_site) / total
        return {"diff": diff, "low": math.nan, "high": math.nan, "units": total}
    if len(per_site) == 1:
        s = per_site[0]
        return {"diff": s["diff"], "low": s["low"], "high": s["high"], "units": total}
    diff = sum(s["units"] * s["diff"] for s in per_site) / total
    se = math.sqrt(sum((s["units"] / total) ** 2 * s["se"] ** 2 for s in per_site if math.isfinite(s["se"])))
    return {"diff": diff, "low": diff - Z95 * se, "high": diff + Z95 * se, "units": total}


def verdict(metric: str, low: float, high: float) -> str:
    """"better" / "worse" when the whole interval says so, "not shown" when it straddles 0."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    lo, hi = sorted((sign * low, sign * high))
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "not shown"


def summary_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task of the last evaluation with results: pooled pretrained / random values of the
    interval's metric, the pooled difference with its interval, the verdict, hospitals and units."""
    evals = [r for r in history if r.get("kind") == "evaluate" and any(s["status"] == "ok" for s in r["sites"])]
    if not evals:
        return []
    last = evals[-1]
    pooled = split_flat(last["metrics"])
    ok = [s for s in last["sites"] if s["status"] == "ok"]
    per_site = {s["name"]: site_intervals(s["metrics"]) for s in ok}
    per_site_pixels = {s["name"]: site_intervals(s["metrics"], CI_PIXELS_SEGMENT) for s in ok}
    rows = []
    tasks = sorted({t for t, _ in pooled}, key=lambda t: (FAMILIES.index(t.split("/")[0])
                                                           if t.split("/")[0] in FAMILIES else 99, t))
    headline = dict(headline_metrics(pooled))
    for task in tasks:
        cis = [dict(ci[task], site=name) for name, ci in per_site.items() if task in ci]
        metric = cis[0]["metric"] if cis else headline.get(task)
        if metric is None or (task, metric) not in pooled:
            continue
        cis = [c for c in cis if c["metric"] == metric]
        iv = pooled_interval(cis)
        values = pooled[(task, metric)]
        verdict_ = verdict(metric, iv["low"], iv["high"]) if iv["units"] >= MIN_UNITS else "too few patients"
        # The same difference against the raw-pixel baseline, where it applies (classification, retrieval).
        cis_pix = [dict(ci[task], site=name) for name, ci in per_site_pixels.items()
                   if task in ci and ci[task]["metric"] == metric]
        iv_pix = pooled_interval(cis_pix) if cis_pix else None
        vs_pixels = None
        if iv_pix is not None:
            vs_pixels = {**iv_pix, "verdict": (verdict(metric, iv_pix["low"], iv_pix["high"])
                                               if iv_pix["units"] >= MIN_UNITS else "too few patients")}
        rows.append({"family": task.split("/")[0], "task": task.split("/", 1)[1], "metric": metric,
                     "pretrained": values.get("pretrained", math.nan), "random": values.get("random", math.nan),
                     "pixels": values.get("pixels", math.nan), **iv, "verdict": verdict_, "vs_pixels": vs_pixels,
                     "hospitals": len(cis), "per_site": cis, "round": last["round"]})
    # metrics.json of runs from before the anatomy probe became a task of the suite (classification/anatomy,
    # with intervals): its flat knn-anatomy keys, shown without an interval, so their reports still rebuild.
    m = last["metrics"]
    for key, label in (("knn-anatomy", "anatomy k-NN"), ("linear-anatomy", "anatomy linear probe")):
        if key in m and f"{key}-random" in m:
            rows.append({"family": "anatomy probe", "task": label, "metric": "accuracy", "pretrained": m[key],
                         "random": m[f"{key}-random"], "diff": m[key] - m[f"{key}-random"], "low": math.nan,
                         "high": math.nan, "units": m.get("num-examples", math.nan), "verdict": "no interval",
                         "hospitals": len(ok), "per_site": [], "round": last["round"]})
    return rows
