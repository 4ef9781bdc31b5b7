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

- ``before``: ``ours`` as the code was before issue 21's hardening (transcript signatures and quorum, session
  ids, the durable once-per-round record; revision :data:`BEFORE`), extracted with ``git archive`` into a
  temporary folder and run by its own copy of this script, in the same run on the same machine
  (``--before none`` leaves it out).

Reported per case: seconds of the aggregation phase (all clients' work + the server's, sequential in one
process), by default CPU seconds of that process (``--clock cpu``: other load on a shared machine does not
enter; ``--clock wall`` for wall seconds), the least of ``--repeats`` runs with the kinds interleaved; bytes
uploaded per client (masked vector + key / share traffic), peak RSS, and the ratios, all
measured in this run: upload / fp32 model bytes (target <= 1.01), SecAgg / plain round, SecAgg now / before the
hardening (target <= 1.2), SecAgg / Flower's masking. The last line says whether the targets hold.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "ca8e961"  # main just before issue 21's first commit (ef3c1ff): the secure aggregation the issue measured
UPLOAD_TARGET = 1.01  # SecAgg upload / fp32 model bytes
BEFORE_TARGET = 1.2  # SecAgg wall now / before the hardening, same run


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


def _extract(rev: str, dest: Path) -> Path:
    """The tree of revision ``rev`` of this checkout, written under ``dest`` (git archive)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _run_case(tree: Path, kind: str, size: float, n: int, clock: str) -> dict:
    """One case in a fresh process whose imports come from ``tree``; this script drives the tree's own copy."""
    env = dict(os.environ, PYTHONPATH=str(tree), FLWR_TELEMETRY_ENABLED="0")
    res = subprocess.run([sys.executable, __file__, "--tree-case", str(tree), clock, kind, str(size), str(n)],
                         env=env, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _tree_case(tree: str, clock: str, kind: str, size: float, n: int) -> dict:
    """``_case`` of ``tree``'s own bench/secagg.py. With ``clock = cpu`` its ``time.perf_counter`` reads this
    process's CPU time, so the same timed section (the aggregation phase) is measured in either tree."""
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("secagg_bench_of_tree", Path(tree) / "bench" / "secagg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if clock == "cpu":
        mod.time = types.SimpleNamespace(perf_counter=time.process_time)
    return mod._case(kind, size, n)


def measure(size: float, n: int, repeats: int, before_tree: Path | None, clock: str = "cpu") -> dict:
    """One (parameters, clients) case: every kind ``repeats`` times, interleaved; the least wall time of each."""
    kinds = [("plain", ROOT, "plain"), ("ours", ROOT, "ours"), ("flower", ROOT, "flower")]
    if before_tree is not None:
        kinds.append(("before", before_tree, "ours"))
    row: dict = {"params_m": size, "clients": n, "fp32_bytes": int(size * 1_000_000) * 4}
    for _ in range(repeats):
        for name, tree, kind in kinds:
            res = _run_case(tree, kind, size, n, clock)
            if name not in row or res["wall_s"] < row[name]["wall_s"]:
                row[name] = res
    for kind in ("ours", "flower", *(("before",) if before_tree is not None else ())):
        row[kind]["upload_vs_fp32"] = row[kind]["upload_bytes_per_client"] / row["fp32_bytes"]
        row[kind]["wall_vs_plain"] = row[kind]["wall_s"] / row["plain"]["wall_s"]
        row[kind]["upload_vs_plain"] = row[kind]["upload_bytes_per_client"] / row["plain"]["upload_bytes_per_client"]
    row["ours_vs_flower_wall"] = row["ours"]["wall_s"] / row["flower"]["wall_s"]
    if before_tree is not None:
        row["ours_vs_before_wall"] = row["ours"]["wall_s"] / row["before"]["wall_s"]
    return row


def _line(row: dict) -> str:
    ours, plain = row["ours"], row["plain"]
    before = (f" | secagg now/before {row['ours_vs_before_wall']:.2f} (before {row['before']['wall_s']:.2f} s, "
              f"/plain {row['before']['wall_vs_plain']:.2f})" if "before" in row else "")
    return (f"{row['params_m']:>5g} M x {row['clients']:>2} clients | upload/fp32 secagg {ours['upload_vs_fp32']:.4f} "
            f"flower {row['flower']['upload_vs_fp32']:.2f} | s plain {plain['wall_s']:.2f} secagg "
            f"{ours['wall_s']:.2f} flower {row['flower']['wall_s']:.2f} | secagg/plain {ours['wall_vs_plain']:.2f} "
            f"secagg/flower {row['ours_vs_flower_wall']:.2f}{before} | peak MB plain {plain['peak_rss_mb']:.0f} "
            f"secagg {ours['peak_rss_mb']:.0f}")


def verdict(rows: list[dict]) -> str:
    """One line: the worst upload and now/before ratios of the run against their targets."""
    up = max(r["ours"]["upload_vs_fp32"] for r in rows)
    parts = [f"upload/fp32 max {up:.4f} (target <= {UPLOAD_TARGET}: {'ok' if up <= UPLOAD_TARGET else 'OVER'})"]
    if all("ours_vs_before_wall" in r for r in rows):
        worst = max(r["ours_vs_before_wall"] for r in rows)
        parts.append(f"secagg time now/before max {worst:.2f} (target <= {BEFORE_TARGET}: "
                     f"{'ok' if worst <= BEFORE_TARGET else 'OVER'})")
    return "targets: " + "; ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1, 10, 22], help="millions of parameters")
    p.add_argument("--clients", type=int, nargs="+", default=[5, 10])
    p.add_argument("--repeats", type=int, default=3, help="runs of each kind per case; the least wall time counts")
    p.add_argument("--before", default=BEFORE, help=f"revision to compare with (default {BEFORE}); none: skip")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="CPU seconds of the case's process (default: robust on a shared machine) or wall seconds")
    p.add_argument("--json", action="store_true")
    p.add_argument("--case", nargs=3, metavar=("KIND", "PARAMS_M", "CLIENTS"), help=argparse.SUPPRESS)
    p.add_argument("--tree-case", nargs=5, metavar=("TREE", "CLOCK", "KIND", "PARAMS_M", "CLIENTS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tree_case:
        tree, clock, kind, size, n = args.tree_case
        print(json.dumps(_tree_case(tree, clock, kind, float(size), int(n))))
        return 0
    if args.case:
        print(json.dumps(_case(args.case[0], float(args.case[1]), int(args.case[2]))))
        return 0
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="xr0-bench-secagg-"))
    try:
        before_tree = None if args.before == "none" else _extract(args.before, tmp)
        rows = []
        for size in args.sizes:
            for n in args.clients:
                rows.append(measure(size, n, args.repeats, before_tree, args.clock))
                if not args.json:
                    print(_line(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"rows": rows, "verdict": verdict(rows), "before": args.before, "clock": args.clock},
                         indent=1))
    else:
        print(f"({args.clock} seconds, least of {args.repeats}; before = {args.before})")
        print(verdict(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
