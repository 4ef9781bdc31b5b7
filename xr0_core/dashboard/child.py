"""Entry of the dashboard child process that ``xr0 simulate --dashboard`` starts
(:class:`xr0_core.dashboard.serve.DashboardProcess`): ``python -m xr0_core.dashboard.child --run-dir DIR
--port P --url-file F --parent PID``. Loopback only; the page URL goes to ``F`` once the socket listens. It
stops by itself when the parent is gone (a ``simulate`` killed with SIGKILL leaves no server behind)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path


def watch_parent(pid: int, every: float = 2.0) -> threading.Thread:
    """A daemon thread that sends this process SIGTERM (uvicorn's graceful stop) once ``pid`` is not its
    parent any more."""
    def run() -> None:
        while not threading.Event().wait(every):
            if os.getppid() != pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    t = threading.Thread(target=run, name="watch-parent", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xr0_core.dashboard.child")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--url-file", type=Path, required=True)
    p.add_argument("--parent", type=int, default=0, help="stop when this process is gone")
    args = p.parse_args(argv)
    if args.parent:
        watch_parent(args.parent)
    from xr0_core.dashboard.run_view import RunView
    from xr0_core.dashboard.serve import serve

    serve(RunView(args.run_dir), host="127.0.0.1", port=args.port, poll=args.poll, url_file=args.url_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
