"""Where a federated round's time goes, for 2, 10 and 50 simulated hospitals (issue: federation).

For each federation size it runs a real simulation (Flower Simulation Engine, Ray, ``cpu-tiny`` with a
small head, synthetic hospitals) for ``--rounds`` rounds and prints, for the last round (the first one pays
Ray start-up and image decoding):

- ``round_s``: wall time of the round at the coordinator (send -> replies -> aggregate -> checkpoint);
- ``local_s``: the hospitals' own work on the critical path, ``sum(site-seconds) / concurrency`` where
  concurrency = min(hospitals, Ray CPU slots) (each site reports ``site-seconds``: data, model, training,
  state I/O);
- ``other_s = round_s - local_s``: transport, (de)serialisation, scheduling, aggregation, checkpoint;
  with its parts ``aggregate_s`` and ``checkpoint_s`` measured directly;
- ``overhead = other_s / round_s`` (target <= 5 % at 10 hospitals);
- ``peak_rss_mb``: the largest summed resident memory of this process and its Ray workers seen by a
  sampler thread.

Usage: ``python bench/federation.py [--sizes 2 10 50] [--rounds 2] [--local-steps 5]``. No assertions:
it prints a table and writes ``bench/results/federation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
        except OSError:
            continue
        if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "default_worker.py" in cmd:
            pids.append(int(entry))
    return pids


class PeakMemory:
    """Samples the summed RSS of this process and all Ray processes every 0.5 s."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, _rss_mb_of([os.getpid(), *_ray_pids()]))

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_size(n_sites: int, rounds: int, local_steps: int, images: int, cpus: int, workdir: Path) -> dict:
    from simulation.engine import run_federation
    from xr0_core.config import from_flat
    from xr0_core.data.synthetic import write_federation

    data = workdir / f"hosp{n_sites}"
    write_federation(data, n_sites, images, seed=0, image_size=96)
    out = workdir / f"out{n_sites}"
    cfg = from_flat({
        "preset": "cpu-tiny", "federation.rounds": rounds, "train.local-steps": local_steps,
        "train.batch-size": 8, "model.head-out-dim": 256, "model.ibot-out-dim": 256,
        "federation.out-dir": str(out), "simulation.data-root": str(data),
        "simulation.state-root": str(out / "sites"), "eval.tasks": "probe",
    })
    with PeakMemory() as mem:
        run_federation(cfg, n_sites, app_dir=out / "flower-app", total_cpus=cpus)
    history = json.loads((out / "metrics.json").read_text())["rounds"]
    last = [r for r in history if r["kind"] == "train"][-1]
    site_s = [s["metrics"].get("site-seconds", 0.0) for s in last["sites"] if s["status"] == "ok"]
    concurrency = min(n_sites, cpus)
    local = sum(site_s) / concurrency
    round_s = last["seconds"]
    other = max(0.0, round_s - local)
    return {
        "hospitals": n_sites,
        "round_s": round(round_s, 2),
        "local_s": round(local, 2),
        "other_s": round(other, 2),
        "aggregate_s": round(last["metrics"].get("server-aggregate-seconds", 0.0), 3),
        "checkpoint_s": round(last.get("checkpoint_seconds", 0.0), 3),
        "overhead": round(other / round_s, 3) if round_s else None,
        "peak_rss_mb": round(mem.peak),
        "ok_sites": len(site_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 10, 50])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--images", type=int, default=12, help="images per hospital")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="xr0-bench-") as tmp:
        for n in args.sizes:
            rows.append(bench_size(n, args.rounds, args.local_steps, args.images, args.cpus, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    head = f"{'hospitals':>9} {'round_s':>8} {'local_s':>8} {'other_s':>8} {'aggr_s':>7} {'ckpt_s':>7} {'overhead':>8} {'peak_MB':>8}"
    print(head)
    for r in rows:
        print(f"{r['hospitals']:>9} {r['round_s']:>8} {r['local_s']:>8} {r['other_s']:>8} {r['aggregate_s']:>7} "
              f"{r['checkpoint_s']:>7} {r['overhead']:>8} {r['peak_rss_mb']:>8}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "federation.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
