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
    Coordinator(cfg).run(grid)
