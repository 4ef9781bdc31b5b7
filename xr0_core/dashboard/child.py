"""Entry of the dashboard child process that ``xr0 simulate --dashboard`` starts
(:class:`xr0_core.dashboard.serve.DashboardProcess`): ``python -m xr0_core.dashboard.child --run-dir DIR
--port P --url-file F``. Loopback only; the page URL goes to ``F`` once the socket listens."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xr0_core.dashboard.child")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--url-file", type=Path, required=True)
    args = p.parse_args(argv)
    from xr0_core.dashboard.run_view import RunView
    from xr0_core.dashboard.serve import serve

    serve(RunView(args.run_dir), host="127.0.0.1", port=args.port, poll=args.poll, url_file=args.url_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
