"""Coordinator CPU per round of two parts issue 27 (overhead <= 5 %) changed, before vs after, in one run.

- ``app_fn``: Flower's Ray backend sends its ``app_fn`` (a closure made in ``start_vce``) with every actor
  task; cloudpickle pickles a closure by value each time. Before: ``cloudpickle.dumps`` of such a closure
  (around the real hospital ClientApp, with torch/timm/flwr/ray imported, as in a run) per message; after:
  ``pickle.dumps`` of one :class:`simulation.pickled_once.PickledOnce` per message (the cloudpickle made once).
  ``--messages`` per round (default 200: preflight + train at 100 hospitals).
- ``order``: the canonical order replies are summed in. Before: sort by the SHA-256 of every reply's full
  contents; after: :func:`strategies.canonical.canonical_order` (sampled key, full digest on ties only).
  ``--replies`` replies (default 100) of the real ``cpu-tiny`` shared weights, perturbed per reply.

Before/after alternate ``--k`` times; the least CPU seconds of each is kept (the machine is shared); the load
average is printed. Usage::

    python bench/round_parts.py [--k 5] [--messages 200] [--replies 100]

No assertions: it prints a table and the ratios and writes ``bench/results/round_parts.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def _flower_like_app_fn():
    """A closure like ``start_vce``'s ``_load_client_app`` (flwr 1.42): cloudpickle must pickle it by value."""
    from client.app import app as client_app

    def _load_client_app():
        return client_app
    return _load_client_app


def _replies(n: int) -> list[dict[str, np.ndarray]]:
    from xr0_core.config import from_flat
    from xr0_core.ssl.factory import initial_shared_state

    cfg = from_flat({"preset": "cpu-tiny", "model.head-out-dim": 256, "model.ibot-out-dim": 256})  # as federation.py
    base = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in initial_shared_state(cfg).items()}
    rng = np.random.default_rng(0)
    return [{k: v + rng.standard_normal(v.shape, dtype=np.float32) * 1e-3 for k, v in base.items()} for _ in range(n)]


def _full_digest_sort(pairs):
    def digest(w):
        h = hashlib.sha256()
        for name in sorted(w):
            h.update(name.encode())
            h.update(memoryview(np.ascontiguousarray(w[name])).cast("B"))
        return h.hexdigest()
    return sorted(pairs, key=lambda p: digest(p[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--replies", type=int, default=100)
    args = parser.parse_args()

    import cloudpickle
    import ray  # noqa: F401 - imported in a run: cloudpickle's module scan walks sys.modules
    import timm  # noqa: F401

    from simulation.pickled_once import PickledOnce
    from strategies.canonical import canonical_order

    fn = _flower_like_app_fn()
    pairs = [(w, 1.0 + i % 3) for i, w in enumerate(_replies(args.replies))]
    mb = sum(a.nbytes for a in pairs[0][0].values()) / 2**20
    print(f"{len(pairs[0][0])} arrays, {mb:.1f} MB per reply; load {os.getloadavg()[0]:.2f}")

    def before_app():
        for _ in range(args.messages):
            cloudpickle.dumps(fn)

    def after_app():
        once = PickledOnce(fn)  # once per run in a simulation; counted here once per round (an upper bound)
        for _ in range(args.messages):
            pickle.dumps(once)

    def before_order():
        _full_digest_sort(pairs)

    def after_order():
        canonical_order(pairs)

    assert [id(p[0]) for p in canonical_order(pairs)] == [id(p[0]) for p in canonical_order(pairs[::-1])]
    best: dict[str, float] = {}
    for _ in range(args.k):  # interleaved: a load spike hits both sides alike
        for name, f in (("app_fn before", before_app), ("app_fn after", after_app),
                        ("order before", before_order), ("order after", after_order)):
            best[name] = min(best.get(name, float("inf")), _cpu(f))
    load = os.getloadavg()[0]
    rows = {}
    for part in ("app_fn", "order"):
        b, a = best[f"{part} before"], best[f"{part} after"]
        rows[part] = {"before_cpu_s": round(b, 4), "after_cpu_s": round(a, 4), "saved_cpu_s": round(b - a, 4),
                      "ratio": round(a / b, 4) if b else None}
        print(f"{part:7s} before {b:7.4f} CPU s/round  after {a:7.4f}  saved {b - a:7.4f}  ratio {a / b:.4f}")
    print(f"load {load:.2f}")
    out = ROOT / "bench" / "results" / "round_parts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"messages": args.messages, "replies": args.replies, "k": args.k,
                               "reply_mb": round(mb, 2), "parts": rows, "load_avg": round(load, 2)}, indent=1))


if __name__ == "__main__":
    main()
