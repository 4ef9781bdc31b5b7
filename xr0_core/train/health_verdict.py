"""The SSL health verdict from measurements already taken (:mod:`xr0_core.train.health` measures them).

Pure Python on scalars, no torch: the run report, ``xr0 simulate`` and the live dashboard judge a run from its
``metrics.json`` history without loading a model library.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

OK, COLLAPSED, NOT_LEARNING = "ok", "collapsed", "not learning"
PREFIX = "health/"

# Thresholds of the verdict. A constant backbone has RankMe 1 and feature std 0 exactly; a random-init ViT on
# radiographs already has a RankMe of ~15-20 (docs/ablations.md), so below 2 nothing but collapse remains.
COLLAPSE_RANKME = 2.0
COLLAPSE_STD = 1e-3
# "Not learning": the features of the probe batch did not move (relative change of the CLS features since the
# first measurement) and the loss did not fall.
STILL_CHANGE = 1e-4


def assess(history: Sequence[Mapping[str, float]], losses: Sequence[float] = ()) -> dict[str, Any]:
    """Verdict on a run from its health measurements (oldest first; bare or ``health/``-prefixed keys).

    ``collapsed``: the last measurement has RankMe(CLS) < 2 or feature std < 1e-3 (every image maps to
    (nearly) the same feature). Prototype usage and entropies are reported, not judged: a random-init
    teacher already sends similar images to one prototype, so they alone would raise false alarms. ``not learning``: the loss did not fall from its first to its last tenth (``losses``) and
    the probe features did not change. Otherwise ``ok``.

    Returns
    -------
    dict: ``status`` (ok | collapsed | not learning), ``reasons`` (list of str), ``last`` (the last
    measurement, bare keys).
    """
    rows = [{k[len(PREFIX):] if k.startswith(PREFIX) else k: float(v) for k, v in h.items()} for h in history]
    rows = [r for r in rows if "rankme-cls" in r]
    if not rows:
        return {"status": "unknown", "reasons": ["no health measurement"], "last": {}}
    last = rows[-1]
    reasons = []
    if last["rankme-cls"] < COLLAPSE_RANKME:
        reasons.append(f"RankMe of CLS features is {last['rankme-cls']:.2f} (< {COLLAPSE_RANKME}): the probe images "
                       "map to (nearly) one direction")
    if last.get("feature-std", 1.0) < COLLAPSE_STD:
        reasons.append(f"feature std across probe images is {last['feature-std']:.2e} (< {COLLAPSE_STD}): "
                       "constant output")
    if reasons:
        return {"status": COLLAPSED, "reasons": reasons, "last": last}
    losses = [x for x in losses if math.isfinite(x)]
    if len(losses) >= 10:
        w = max(1, len(losses) // 10)
        first, end = sum(losses[:w]) / w, sum(losses[-w:]) / w
        still = last.get("feature-change", 1.0) < STILL_CHANGE
        if end >= first and still:
            reasons.append(f"the loss did not fall ({first:.3f} -> {end:.3f}) and the probe features did not move")
            return {"status": NOT_LEARNING, "reasons": reasons, "last": last}
    return {"status": OK, "reasons": reasons, "last": last}


def assess_history(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Verdict of a federated run from its round history (``metrics.json["rounds"]``): each hospital's train
    replies carry ``health/*`` and ``loss`` scalars; each hospital is assessed on its own sequence.

    Returns
    -------
    dict: ``status`` (the worst over hospitals: collapsed > not learning > ok; ``unknown`` without any
    measurement, e.g. under DP), ``sites`` (name -> :func:`assess` result).
    """
    per_site: dict[str, list[Mapping[str, float]]] = {}
    losses: dict[str, list[float]] = {}
    for entry in history:
        if entry.get("kind") != "train":
            continue
        for site in entry.get("sites", []):
            m = site.get("metrics", {})
            name = str(site.get("name", site.get("node_id", "?")))
            if any(k.startswith(PREFIX) for k in m):
                per_site.setdefault(name, []).append(m)
            if "loss" in m:
                losses.setdefault(name, []).append(float(m["loss"]))
    sites = {name: assess(rows, losses.get(name, [])) for name, rows in sorted(per_site.items())}
    order = [COLLAPSED, NOT_LEARNING, OK]
    status = next((s for s in order if any(v["status"] == s for v in sites.values())), "unknown")
    return {"status": status, "sites": sites}
