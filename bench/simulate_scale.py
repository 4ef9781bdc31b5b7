"""Peak memory of ``xr0 simulate`` at 1,000 simulated hospitals on one machine (issue 27).

Runs ``xr0 simulate --sites N`` (cpu-tiny, lazily written synthetic hospitals, a fraction of them per round) as
a child process and samples, every 0.5 s, the summed resident memory of every process it started: the command,
Ray's GCS / raylet / agents and every ClientApp actor. Processes are found by a marker in their environment
(Ray passes the driver's environment to everything it starts), so other sessions' Ray processes on a shared
machine are not counted and processes Ray re-parents are. Prints and writes wall and CPU seconds, the peak
summed RSS (target <= 16 GB at 1,000 hospitals), the largest single process, how many hospitals were written,
and the rounds' outcome. Usage::

    python bench/simulate_scale.py --sites 1000 --rounds 2 --fraction 0.05 [--out DIR] [-- extra xr0 args]

Results: ``bench/results/simulate_<N>sites.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "XR0_SCALE_BENCH"


def _marked() -> list[int]:
    pids = []
    token = f"{MARK}={os.getpid()}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if token in open(f"/proc/{entry}/environ", "rb").read().split(b"\0"):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


class TreeSampler:
    """Peak summed RSS, the largest process, and the CPU seconds of every marked process (last seen)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self.peak_single_mb = 0.0
        self.peak_procs = 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            pids = _marked()
            rss = [_rss_mb(p) for p in pids]
            if sum(rss) > self.peak_mb:
                self.peak_mb, self.peak_procs = sum(rss), len(pids)
            self.peak_single_mb = max([self.peak_single_mb, *rss])
            for p in pids:
                self.cpu[p] = max(self.cpu.get(p, 0.0), _cpu_s(p))

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.05, help="federation.fraction-train (and evaluate)")
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--images-per-site", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None, help="simulate --out (default: a fresh temporary folder)")
    parser.add_argument("--limit-gb", type=float, default=16.0)
    parser.add_argument("extra", nargs="*", help="more xr0 simulate arguments (after --)")
    args = parser.parse_args()
    import tempfile

    out = args.out or Path(tempfile.mkdtemp(prefix="xr0-scale-")) / "sim"
    cmd = [sys.executable, "-m", "cli", "simulate", "--sites", str(args.sites), "--rounds", str(args.rounds),
           "--local-steps", str(args.local_steps), "--images-per-site", str(args.images_per_site),
           "--out", str(out), "--set", f"federation.fraction-train={args.fraction}",
           "--set", "eval.tasks=probe", *args.extra]
    env = dict(os.environ, **{MARK: str(os.getpid())})
    print(" ".join(cmd), flush=True)
    t0 = time.monotonic()
    with TreeSampler() as tree:
        proc = subprocess.run(cmd, env=env, cwd=ROOT)
    wall = time.monotonic() - t0
    written = sum((d / "manifest.csv").is_file() for d in (out / "hospitals").iterdir() if d.is_dir()) \
        if (out / "hospitals").is_dir() else 0
    rounds = json.loads((out / "metrics.json").read_text())["rounds"] if (out / "metrics.json").exists() else []
    row = {
        "sites": args.sites, "rounds": args.rounds, "fraction_train": args.fraction,
        "local_steps": args.local_steps, "images_per_site": args.images_per_site, "exit_code": proc.returncode,
        "wall_s": round(wall, 1), "cpu_s": round(sum(tree.cpu.values()), 1),
        "peak_rss_mb": round(tree.peak_mb), "peak_rss_gb": round(tree.peak_mb / 1024, 2),
        "processes_at_peak": tree.peak_procs, "largest_process_mb": round(tree.peak_single_mb),
        "limit_gb": args.limit_gb, "within_limit": tree.peak_mb / 1024 <= args.limit_gb,
        "hospitals_written": written,
        "train_rounds": [{"round": r["round"], "sites": len(r["sites"]),
                          "ok": sum(s["status"] == "ok" for s in r["sites"]), "seconds": r.get("seconds")}
                         for r in rounds if r["kind"] == "train"],
        "evaluated": [len(r["sites"]) for r in rounds if r["kind"] == "evaluate"],
        "report": str(out / "report.html"),
        "load_avg": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(row, indent=2))
    print(f"{args.sites} hospitals, {args.rounds} rounds at fraction {args.fraction}: peak RSS "
          f"{row['peak_rss_gb']} GB over {tree.peak_procs} processes (limit {args.limit_gb} GB: "
          f"{'met' if row['within_limit'] else 'NOT met'}), {written} hospitals written, exit {proc.returncode}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"simulate_{args.sites}sites.json").write_text(json.dumps(row, indent=2) + "\n")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
