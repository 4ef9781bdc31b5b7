"""Benchmark: our SecAgg+ vs plain FedAvg vs Flower's legacy SecAgg+ masking, same model sizes.

    python bench/secagg.py                      # 1 M, 10 M, 22 M parameters x 5, 10 clients (minutes)
    python bench/secagg.py --sizes 1 --clients 5 --json

For each (parameters, clients) case, in a fresh subprocess (so peak memory is the case's own):

- ``plain``  : one FedAvg train round through our strategy over :class:`simulation.inprocess.InProcessGrid`
  (real Flower messages and ClientApp routing, clients in this process, "training" = adding a fixed delta);
- ``ours``   : the same round with secure aggregation on (all four stages, all-to-all, threshold majority);
- ``flower`` : Flower 1.42's SecAgg+ client masking and server unmasking, called through its own functions
  (``flwr.common.secure_aggregation``: ``quantize``, ``pseudo_rand_gen``, ``parameters_*``, ``dequantize``;
  the same call sequence as ``secaggplus_mod._fit`` / ``SecAggPlusWorkflow``'s unmask), without its key
  exchange and message transport, which only flatters it. Its legacy API cannot run over our Grid.

Reported per case: wall seconds of the aggregation phase (all clients' work + the server's, sequential on
this machine), bytes uploaded per client (masked vector + key / share traffic), peak RSS, and the ratios
against plain FedAvg and the fp32 model size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _model(params_m: float) -> dict[str, np.ndarray]:
    total = int(params_m * 1_000_000)
    rng = np.random.default_rng(0)
    sizes = [total // 2, total // 3]
    sizes.append(total - sum(sizes))
    return {f"layer{i}.weight": rng.normal(0, 0.02, s).astype(np.float32) for i, s in enumerate(sizes)}


def _app(model):
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from client import secagg as client_secagg
    from xr0_core import record_keys as keys

    def train(msg: Message, context: Context) -> Message:
        node = int(msg.metadata.dst_node_id)
        arrays = msg.content.array_records[keys.ARRAYS]
        rng = np.random.default_rng(node)
        new = {k: arrays[k].numpy() + rng.normal(0, 1e-3, 1).astype(np.float32) for k in sorted(arrays)}
        return Message(RecordDict({keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in new.items()}),
                                  keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 100 + node % 7})}), reply_to=msg)

    app = ClientApp()
    app.train()(train)
    client_secagg.register(app, train, client_secagg.in_memory_trust())
    return app


def _reply_bytes(msg) -> int:
    if not msg.has_content():
        return 0
    c = msg.content
    n = sum(len(a.data) for rec in c.array_records.values() for a in rec.values())
    for rec in c.config_records.values():
        for v in rec.values():
            vals = v if isinstance(v, list) else [v]
            n += sum(len(x) if isinstance(x, bytes) else 8 for x in vals)
    return n


def run_ours_or_plain(params_m: float, n: int, secure: bool) -> dict:
    from flwr.app import ConfigRecord

    from strategies.aggregate import ServerOptimizer
    from strategies.fedavg_ssl import XR0FedAvg, numpy_to_arrays
    from simulation.inprocess import InProcessGrid
    from strategies.secagg import SecAggGrid, SecAggSettings, XR0SecAggFedAvg

    model = _model(params_m)
    grid = InProcessGrid(_app(model), n)
    cls = XR0SecAggFedAvg if secure else XR0FedAvg
    strat = cls(round_offset=0, local_steps=1, total_rounds=1, run_seed=0, run_key="bench", config_hash="h",
                server_optimizer=ServerOptimizer(), min_replies=2)
    g = SecAggGrid(grid, SecAggSettings(), rng=random.Random(0)) if secure else grid
    msgs = strat.configure_train(1, numpy_to_arrays(model), ConfigRecord(), g)
    t0 = time.perf_counter()
    replies = g.send_and_receive(msgs, timeout=None)
    new, _ = strat.aggregate_train(1, replies)
    wall = time.perf_counter() - t0
    if new is None:
        raise RuntimeError("the benchmark round did not aggregate")
    up = sum(_reply_bytes(r) for r in grid.received if r.metadata.message_type.startswith(("train", "query"))) / n
    return {"wall_s": wall, "upload_bytes_per_client": up}


def run_flower(params_m: float, n: int) -> dict:
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (factor_combine, factor_extract,
                                                                    parameters_addition, parameters_mod,
                                                                    parameters_multiply, parameters_subtraction)
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    model = list(_model(params_m).values())
    clipping_range, target_range, mod_range, max_weight = 8.0, 4194304, 4294967296, 1000.0  # Flower defaults
    nodes = list(range(1, n + 1))
    seeds = {u: os.urandom(32) for u in nodes}
    pair = {(min(u, v), max(u, v)): os.urandom(32) for u in nodes for v in nodes if u != v}
    t0 = time.perf_counter()
    total = None
    upload = 0
    for u in nodes:  # client stage 2 (secaggplus_mod._fit), all-to-all
        rng = np.random.default_rng(u)
        params = [a + rng.normal(0, 1e-3, 1).astype(np.float32) for a in model]
        q_ratio = round((100 + u % 7) / max_weight * target_range)
        params = parameters_multiply(params, q_ratio / target_range)
        q = factor_combine(q_ratio, quantize(params, clipping_range, target_range))
        dims = [a.shape for a in q]
        q = parameters_addition(q, pseudo_rand_gen(seeds[u], mod_range, dims))
        for v in nodes:
            if v == u:
                continue
            mask = pseudo_rand_gen(pair[(min(u, v), max(u, v))], mod_range, dims)
            q = parameters_addition(q, mask) if u > v else parameters_subtraction(q, mask)
        q = parameters_mod(q, mod_range)
        upload += sum(a.nbytes for a in q)
        total = q if total is None else parameters_addition(total, q)
    for u in nodes:  # server unmask (SecAggPlusWorkflow.unmask_stage): remove self masks, mod, dequantize
        total = parameters_subtraction(total, pseudo_rand_gen(seeds[u], mod_range, [a.shape for a in total]))
    total = parameters_mod(total, mod_range)
    ratio, total = factor_extract(total)
    total = dequantize(total, clipping_range, target_range)
    total = parameters_multiply(total, target_range / ratio)
    return {"wall_s": time.perf_counter() - t0, "upload_bytes_per_client": upload / n}


def _case(kind: str, params_m: float, n: int) -> dict:
    out = run_flower(params_m, n) if kind == "flower" else run_ours_or_plain(params_m, n, secure=kind == "ours")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1, 10, 22], help="millions of parameters")
    p.add_argument("--clients", type=int, nargs="+", default=[5, 10])
    p.add_argument("--json", action="store_true")
    p.add_argument("--case", nargs=3, metavar=("KIND", "PARAMS_M", "CLIENTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(_case(args.case[0], float(args.case[1]), int(args.case[2]))))
        return 0
    rows = []
    env = dict(os.environ, PYTHONPATH=str(ROOT), FLWR_TELEMETRY_ENABLED="0")
    for size in args.sizes:
        for n in args.clients:
            row = {"params_m": size, "clients": n, "fp32_bytes": int(size * 1_000_000) * 4}
            for kind in ("plain", "ours", "flower"):
                res = subprocess.run([sys.executable, __file__, "--case", kind, str(size), str(n)], env=env,
                                     capture_output=True, text=True, check=True)
                row[kind] = json.loads(res.stdout.strip().splitlines()[-1])
            for kind in ("ours", "flower"):
                row[kind]["upload_vs_fp32"] = row[kind]["upload_bytes_per_client"] / row["fp32_bytes"]
                row[kind]["wall_vs_plain"] = row[kind]["wall_s"] / row["plain"]["wall_s"]
                row[kind]["upload_vs_plain"] = (row[kind]["upload_bytes_per_client"]
                                                / row["plain"]["upload_bytes_per_client"])
            row["ours_vs_flower_wall"] = row["ours"]["wall_s"] / row["flower"]["wall_s"]
            rows.append(row)
            if not args.json:
                print(f"{size:>5g} M x {n:>2} clients | wall s plain {row['plain']['wall_s']:.2f} ours "
                      f"{row['ours']['wall_s']:.2f} flower {row['flower']['wall_s']:.2f} (ours/flower "
                      f"{row['ours_vs_flower_wall']:.2f}) | upload/fp32 ours {row['ours']['upload_vs_fp32']:.4f} "
                      f"(/plain reply {row['ours']['upload_vs_plain']:.4f}) "
                      f"flower {row['flower']['upload_vs_fp32']:.2f} | peak MB plain {row['plain']['peak_rss_mb']:.0f} "
                      f"ours {row['ours']['peak_rss_mb']:.0f} flower {row['flower']['peak_rss_mb']:.0f}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
