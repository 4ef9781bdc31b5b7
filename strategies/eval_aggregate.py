"""Pooling of federated evaluation replies with per-task example weights (D8), as pure functions.

A hospital's evaluation reply holds flat scalar keys: ``<task>/<metric>`` (e.g.
``classification/label_nodule/linear-auroc``), the random-init twin ``<task>/random/<metric>`` and
``<task>/num-examples`` (test examples that task was scored on there), next to site-level keys weighted by
the reply's ``num-examples``. A site with 12 test masks and 300 test images must weigh 12 in the pooled Dice
and 300 in the pooled AUROC, so each key is weighted by the ``num-examples`` of its longest ``/``-prefix that
has one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

NUM_EXAMPLES = "num-examples"
SUFFIX = "/" + NUM_EXAMPLES


def weight_key(key: str, metrics: Mapping[str, float], default: str = NUM_EXAMPLES) -> str:
    """The ``.../num-examples`` key that weighs ``key`` in ``metrics``: its longest prefix that has one."""
    parts = key.split("/")
    for end in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:end]) + SUFFIX
        if candidate in metrics:
            return candidate
    return default


def pooled_metrics(replies: Sequence[Mapping[str, float]], default: str = NUM_EXAMPLES,
                   exclude: frozenset[str] = frozenset({"partition-id"})) -> dict[str, float]:
    """Example-weighted mean of every metric over ``replies`` (one mapping per ok site).

    Every ``num-examples`` key (site-level and per task) is summed; every other key is averaged with the
    weight :func:`weight_key` picks in each reply. Sites without a key do not count for it; a key whose
    weights sum to 0 is left out.
    """
    out: dict[str, float] = {}
    counts = {k for r in replies for k in r if k == default or k.endswith(SUFFIX)}
    for k in sorted(counts):
        out[k] = float(sum(r.get(k, 0.0) for r in replies))
    names = sorted({k for r in replies for k in r} - counts - set(exclude))
    for name in names:
        num = den = 0.0
        for r in replies:
            if name not in r:
                continue
            w = float(r.get(weight_key(name, r, default), 0.0))
            num += float(r[name]) * w
            den += w
        if den > 0:
            out[name] = num / den
    return out
