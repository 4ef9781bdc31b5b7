"""Where a federated round's time goes at 100+ simulated hospitals, before and after issue 27, in one run.

For each federation size it runs real simulations (Flower Simulation Engine, Ray, ``cpu-tiny`` with a small
head, synthetic hospitals written once and shared) for ``--rounds`` rounds, alternating two variants ``--k``
times each:

- ``flower``: Flower's own dispatch loop (the Simulation Engine asks the LinkState, every 0.1 s, for each
  hospital's next message: a scan of every waiting message per hospital; what main ran before issue 27);
- ``xr0``: :mod:`simulation.fastvce` (one scan per tick), :mod:`simulation.shared_weights` (the round's weights
  put into Ray's object store once, not pickled into every message's task) and the rest of issue 27's changes
  (those outside the engine, e.g. the ClientApp's one config parse per message, run in both variants).

Per run it reads the last train round (the first pays Ray start-up and image decoding):

- ``round_s``: wall time of the round at the coordinator (preflight -> train -> aggregate -> checkpoint);
- ``local_s``: the hospitals' own work on the critical path, ``sum(site-seconds) / concurrency`` where
  concurrency = min(hospitals, Ray CPU slots) (``site-seconds``: data, model, training, state I/O);
- ``other_s = round_s - local_s`` and ``overhead = other_s / round_s`` (target <= 5 % at 100 hospitals, 2 local
  steps); its parts: ``aggregate_s`` and ``checkpoint_s`` measured directly, ``app_s`` (the ClientApp's time
  outside ``site-seconds``: config, checks, records, audit, preflight answers; per slot) and ``driver_cpu_s``
  (CPU seconds the coordinator process used during the round: dispatch, serialisation, aggregation,
  bookkeeping; on a 2-core machine it competes with the hospitals), less ``instrument_cpu_s`` (this bench's
  own memory sampler and /proc scans, reported on its own);
- ``cpu_overhead = 1 - site_cpu_s / tree_cpu_s``: the same question in CPU seconds, which a loaded machine
  does not distort: ``tree_cpu_s`` is every CPU second of this process and its Ray processes (GCS, raylet,
  log and autoscaler monitors, agents, actors) during the round, ``site_cpu_s`` the hospitals' ``train_site`` calls' own;
- ``peak_rss_mb``: the largest summed resident memory of this process and its Ray workers (sampled).

The machine is shared: wall times drift between runs, so the variants alternate and the least overhead of
``--k`` runs is kept; the load average is printed. Usage::

    python bench/federation.py [--sizes 100] [--rounds 2] [--local-steps 2] [--k 1]

No assertions: it prints a table and the ratios and writes ``bench/results/federation_<size>sites.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING_DIR_VAR = "XR0_BENCH_TIMING_DIR"  # where each Ray actor appends its ClientApp timings


def _rss_mb_of(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _ray_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="ignore")
            env = open(f"/proc/{entry}/environ", "rb").read()
        except OSError:
            continue
        mine = f"{TIMING_DIR_VAR}=".encode() in env  # only this bench's Ray (other sessions run their own)
        # every process of this Ray session: GCS, raylet, workers and actors, and its Python helpers (log
        # monitor, autoscaler monitor, dashboard and runtime-env agents), which serve the simulation too
        if mine and int(entry) != os.getpid() and ("ray" in cmd or "default_worker.py" in cmd):
            pids.append(int(entry))
    return pids


INSTRUMENT_CPU = [0.0]  # CPU seconds this bench's own measuring (memory sampler, /proc scans) used so far


class PeakMemory:
    """Samples the summed RSS of this process and its Ray processes every 0.5 s (the Ray pid list, a scan of
    every process on the machine, every 5 s). Its own CPU seconds go to :data:`INSTRUMENT_CPU`, which the
    round's CPU figures leave out: the sampler is this bench's, not the federation's (at 100 hospitals it was
    ~1.7 CPU s per round of the coordinator process)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids: list[int] = []
        tick = 0
        while not self._stop.wait(0.5):
            c0 = time.thread_time()
            if tick % 10 == 0:
                pids = _ray_pids()
            tick += 1
            self.peak = max(self.peak, _rss_mb_of([os.getpid(), *pids]))
            INSTRUMENT_CPU[0] += time.thread_time() - c0

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb_of([os.getpid(), *_ray_pids()]))


def _time_train_site():
    """Wrap ``client.app.train_site`` in this actor so that its CPU seconds are known (bench only); returns the
    module, whose ``_bench_site_cpu`` holds the last call's. (The ClientApp, and with it this bench's functions,
    is unpickled anew in the actor: state must live in an imported module, not in this script's globals.)"""
    import client.app as app

    if not getattr(app.train_site, "_bench_timed", False):
        inner = app.train_site

        def timed(*args, **kwargs):
            c0 = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                app._bench_site_cpu = time.process_time() - c0

        timed._bench_timed = True
        app.train_site = timed
    return app


def timing_mod(msg, context, call_next):
    """Innermost ClientApp mod (bench only): wall and CPU seconds of every handler call and CPU seconds of its
    local training (``train_site``), appended per actor."""
    app = _time_train_site()
    app._bench_site_cpu = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    reply = call_next(msg, context)
    folder = os.environ.get(TIMING_DIR_VAR)
    if folder:
        try:
            rnd = int(msg.content.config_records["config"]["server-round"])
        except Exception:  # noqa: BLE001 - a message without the round config (secure-aggregation stages)
            rnd = -1
        # process_time stamps (the whole actor process) at entry and exit: the CPU an actor spends between two
        # handler calls (outer mods, Flower's and Ray's per-task work) is the gap from one exit to the next entry
        line = {"type": msg.metadata.message_type, "round": rnd, "wall": time.perf_counter() - t0,
                "cpu": time.process_time() - c0, "site_cpu": app._bench_site_cpu,
                "cpu_in": c0, "cpu_out": time.process_time(), "t_in": t0, "pid": os.getpid()}
        with open(Path(folder) / f"actor-{os.getpid()}.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
    return reply


def _tree_cpu_s() -> float:
    """CPU seconds so far of this process and this bench's Ray processes (GCS, raylet, agents, actors)."""
    total = 0.0
    for pid in _ray_pids():
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return total + ru.ru_utime + ru.ru_stime


class DriverCPU:
    """CPU seconds of this process, and of it with its Ray processes, at every round end (the coordinator's
    on_round_end hook)."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, str, float, float]] = []

    def wrap(self, coordinator_cls):
        marks = self.marks

        class Timed(coordinator_cls):
            def on_round_end(self, outcome):
                super().on_round_end(outcome)
                c0 = time.thread_time()
                ru = resource.getrusage(resource.RUSAGE_SELF)
                tree = _tree_cpu_s()
                INSTRUMENT_CPU[0] += time.thread_time() - c0  # the /proc scan is this bench's, not the round's
                # (round, kind, coordinator CPU, all processes' CPU, instrument CPU so far)
                marks.append((outcome.server_round, outcome.kind, ru.ru_utime + ru.ru_stime, tree, INSTRUMENT_CPU[0]))
        return Timed


def run_variant(variant: str, n_sites: int, data: Path, rounds: int, local_steps: int, cpus: int,
                workdir: Path) -> dict:
    import server.app as server_app_module
    from client.app import build_app
    from simulation.engine import run_federation
    from xr0_core.config import from_flat

    out = workdir / f"out-{variant}-{n_sites}-{time.monotonic_ns()}"
    timing = out / "timing"
    timing.mkdir(parents=True)
    os.environ[TIMING_DIR_VAR] = str(timing)
    cfg = from_flat({
        "preset": "cpu-tiny", "federation.rounds": rounds, "train.local-steps": local_steps,
        "train.batch-size": 8, "model.head-out-dim": 256, "model.ibot-out-dim": 256,
        "federation.out-dir": str(out), "simulation.data-root": str(data),
        "simulation.state-root": str(out / "sites"), "eval.tasks": "none",
    })
    cpu = DriverCPU()
    original = server_app_module.Coordinator
    server_app_module.Coordinator = cpu.wrap(original)  # the ServerApp's main looks the name up per run
    try:
        with PeakMemory() as mem:
            run_federation(cfg, n_sites, app_dir=out / "flower-app", total_cpus=cpus,
                           client_app=build_app(extra_mods=[timing_mod]), one_scan_dispatch=(variant == "xr0"),
                           shared_weights=(variant == "xr0"))
    finally:
        server_app_module.Coordinator = original
    history = json.loads((out / "metrics.json").read_text())["rounds"]
    last = [r for r in history if r["kind"] == "train"][-1]
    site_s = [s["metrics"].get("site-seconds", 0.0) for s in last["sites"] if s["status"] == "ok"]
    concurrency = min(n_sites, cpus)
    local = sum(site_s) / concurrency
    round_s = last["seconds"]
    other = max(0.0, round_s - local)
    calls = [json.loads(line) for f in timing.glob("actor-*.jsonl") for line in f.read_text().splitlines()]
    this_round = [c for c in calls if c["round"] == last["round"] and not c["type"].startswith("evaluate")]
    app_total = sum(c["wall"] for c in this_round) / concurrency
    between = 0.0  # actors' CPU from one handler exit to their next entry within the round
    for pid in {c["pid"] for c in this_round}:
        mine = sorted((c for c in calls if c.get("pid") == pid), key=lambda c: c["t_in"])
        for prev, cur in zip(mine, mine[1:]):
            if cur in this_round and prev in this_round:
                between += cur["cpu_in"] - prev["cpu_out"]
    at = max(i for i, m in enumerate(cpu.marks) if m[1] == "train")  # the last train round's end
    instrument = cpu.marks[at][4] - (cpu.marks[at - 1][4] if at else 0.0)
    driver_cpu = cpu.marks[at][2] - (cpu.marks[at - 1][2] if at else 0.0) - instrument
    tree_cpu = cpu.marks[at][3] - (cpu.marks[at - 1][3] if at else 0.0) - instrument
    site_cpu = sum(c.get("site_cpu", 0.0) for c in this_round)
    return {
        "variant": variant,
        "hospitals": n_sites,
        "round_s": round(round_s, 2),
        "local_s": round(local, 2),
        "other_s": round(other, 2),
        "overhead": round(other / round_s, 4) if round_s else None,
        "app_s": round(app_total - local, 2),
        "preflight_s": round(sum(c["wall"] for c in this_round if c["type"].startswith("query.")) / concurrency, 2),
        "driver_cpu_s": round(driver_cpu, 2),
        # CPU terms (robust to a loaded machine): every CPU second of the round's processes not spent in the
        # hospitals' local work (train_site) is overhead.
        "tree_cpu_s": round(tree_cpu, 2),
        "instrument_cpu_s": round(instrument, 2),  # this bench's sampler and /proc scans: left out of the above
        "site_cpu_s": round(site_cpu, 2),
        "handler_cpu_s": round(sum(c["cpu"] for c in this_round), 2),  # the ClientApp calls, site work included
        "between_calls_cpu_s": round(between, 2),  # actors between two calls: outer mods, Flower's and Ray's task work
        "cpu_overhead": round(1 - site_cpu / tree_cpu, 4) if tree_cpu > 0 else None,
        "aggregate_s": round(last["metrics"].get("server-aggregate-seconds", 0.0), 3),
        "checkpoint_s": round(last.get("checkpoint_seconds", 0.0), 3),
        "peak_rss_mb": round(mem.peak),
        "ok_sites": len(site_s),
        "load_avg": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--images", type=int, default=12, help="images per hospital")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--k", type=int, default=1, help="runs per variant (alternating); the least overhead is kept")
    parser.add_argument("--variants", nargs="+", default=["flower", "xr0"], choices=["flower", "xr0"])
    args = parser.parse_args()
    from xr0_core.data.synthetic import write_federation

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    head = (f"{'variant':>7} {'sites':>5} {'round_s':>8} {'local_s':>8} {'other_s':>8} {'overhead':>8} {'app_s':>6} "
            f"{'prefl_s':>7} {'drvCPU':>7} {'cpuOvh':>7} {'aggr_s':>7} {'ckpt_s':>7} {'peak_MB':>8} {'load':>5}")
    with tempfile.TemporaryDirectory(prefix="xr0-bench-") as tmp:
        for n in args.sizes:
            data = Path(tmp) / f"hosp{n}"
            write_federation(data, n, args.images, seed=0, image_size=96)
            runs = []
            for _ in range(args.k):
                for variant in args.variants:
                    runs.append(run_variant(variant, n, data, args.rounds, args.local_steps, args.cpus, Path(tmp)))
                    print(json.dumps(runs[-1]), flush=True)
            best = {v: min((r for r in runs if r["variant"] == v), key=lambda r: r["overhead"]) for v in args.variants}
            print(head)
            for r in best.values():
                print(f"{r['variant']:>7} {r['hospitals']:>5} {r['round_s']:>8} {r['local_s']:>8} {r['other_s']:>8} "
                      f"{r['overhead']:>8} {r['app_s']:>6} {r['preflight_s']:>7} {r['driver_cpu_s']:>7} "
                      f"{r['cpu_overhead']:>7} "
                      f"{r['aggregate_s']:>7} {r['checkpoint_s']:>7} {r['peak_rss_mb']:>8} {r['load_avg']:>5}")
            summary = {"hospitals": n, "rounds": args.rounds, "local_steps": args.local_steps, "cpus": args.cpus,
                       "k": args.k, "best": best, "runs": runs, "target_overhead": 0.05}
            if "flower" in best and "xr0" in best:
                f, x = best["flower"], best["xr0"]
                summary["ratios"] = {
                    "overhead_xr0_over_flower": round(x["overhead"] / f["overhead"], 3) if f["overhead"] else None,
                    "round_s_xr0_over_flower": round(x["round_s"] / f["round_s"], 3),
                    "driver_cpu_xr0_over_flower": round(x["driver_cpu_s"] / f["driver_cpu_s"], 3)
                    if f["driver_cpu_s"] else None,
                    "cpu_overhead_xr0_over_flower": round(x["cpu_overhead"] / f["cpu_overhead"], 3)
                    if f["cpu_overhead"] else None,
                }
                print(f"overhead at {n} hospitals: flower {100 * f['overhead']:.1f} % -> xr0 {100 * x['overhead']:.1f} % "
                      f"of the round's wall time (target <= 5 %); in CPU seconds {100 * f['cpu_overhead']:.1f} % -> "
                      f"{100 * x['cpu_overhead']:.1f} %; ratios {summary['ratios']}")
            (results / f"federation_{n}sites.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
