"""Flower ServerApp (coordinator): a thin adapter from Flower's run to :class:`server.run.Coordinator`."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from xr0_core.config import from_flat

from .run import Coordinator

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = from_flat(dict(context.run_config))
    summary = Coordinator(cfg).run(grid)
    if summary.get("status") == "stopped" and not cfg.simulation.data_root:
        # Deployment: a failed ServerApp makes Flower mark the run failed (run.json says why). `xr0 simulate`
        # (simulation.data-root set) reads run.json instead and exits non-zero itself, without a traceback.
        raise RuntimeError(f"XR-0 run stopped: {summary['stop_reason']}")
