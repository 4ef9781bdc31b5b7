"""Run a federation on Flower's Simulation Engine (Ray backend) inside this process (D12).

Why not ``flwr run``: it starts a background SuperLink that nothing stops but killing it, keeps state under
``FLWR_HOME`` and builds a FAB from a project folder, which a pip-installed ``xr0`` does not have. We call
the same engine that the ``flwr-simulation`` process calls (``flwr.simulation.run_simulation._run_simulation``
with ``is_app=True``), so ServerApp, ClientApps, Ray actors and message routing are exactly those of
``flwr run``; only the SuperLink process is left out. The run config travels the way Flower expects: the
ServerApp context gets it directly, and every SuperNode reads it from a generated app folder holding a
``pyproject.toml`` whose ``[tool.flwr.app.config]`` is the full flat config. This relies on a private flwr
function, hence the pin ``flwr>=1.42,<1.43``; ``tests/simulation`` exercises it end to end.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from xr0_core.config import XR0Config
from xr0_core.flat_values import toml_value

log = logging.getLogger(__name__)

# No outbound calls, no dependency installation at run time (D13); set before Ray starts its workers,
# which inherit this process's environment.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def write_app_dir(app_dir: Path, run_config: Mapping[str, Any]) -> Path:
    """A minimal Flower app folder whose pyproject carries ``run_config`` (read by every SuperNode)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[project]",
        'name = "xr0-simulation"',
        'version = "0.1.0"',
        "",
        "[tool.flwr.app]",
        'publisher = "xr0"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "server.app:app"',
        'clientapp = "client.app:app"',
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f'"{k}" = {toml_value(v)}' for k, v in sorted(run_config.items())]
    (app_dir / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return app_dir


def publish_signing_keys(cfg: XR0Config) -> None:
    """Make every simulated hospital's secure-aggregation signing key before any round, so that each pins all
    of them from its first setup on (client/secagg.py: site_trust reads the state folders); in deployment each
    hospital pins the others' keys in its policy (secagg.peer-keys)."""
    from client.site import site_name_of
    from xr0_core.data.index import hospital_dirs
    from xr0_core.secagg.identity import load_or_create

    root = Path(cfg.simulation.data_root).expanduser()
    if not cfg.simulation.data_root or not root.is_dir():
        return  # the ClientApps report the missing folder
    state_root = Path(cfg.simulation.state_root or (root.parent / "state")).expanduser().resolve()
    for d in hospital_dirs(root):
        load_or_create(state_root / site_name_of(d))


def run_federation(
    cfg: XR0Config,
    num_sites: int,
    *,
    app_dir: Path,
    server_app: Any = None,
    client_app: Any = None,
    cpus_per_client: int = 1,
    total_cpus: int | None = None,
    verbose: bool = False,
    ray_address: str | None = None,
    gpus_per_client: float = 0.0,
    one_scan_dispatch: bool = True,
    shared_weights: bool = True,
) -> None:
    """Run ``cfg.federation.rounds`` rounds with ``num_sites`` simulated hospitals.

    Parameters
    ----------
    cfg : XR0Config
        Full configuration; ``simulation.data-root`` must hold ``num_sites`` hospital folders.
    num_sites : int
        Number of SuperNodes (one per hospital).
    app_dir : Path
        Folder for the generated app ``pyproject.toml`` (inside the run's output folder).
    server_app, client_app : flwr ServerApp / ClientApp, optional
        Defaults to :data:`server.app.app` and :data:`client.app.app`; tests pass wrapped apps.
    cpus_per_client : int
        Ray CPU resources per ClientApp: ``total_cpus // cpus_per_client`` hospitals train at once.
    total_cpus : int, optional
        CPUs Ray may use (default: all). Ignored with ``ray_address`` (the cluster has its own).
    ray_address : str, optional
        Attach to a running Ray cluster (``ray start --head`` printed its ``HOST:PORT``) instead of starting a
        local one; the ClientApps run on its nodes, which must hold this project at the same path (they get this
        process's ``PYTHONPATH``). The cluster is left running afterwards: it is not ours to stop.
    gpus_per_client : float
        Ray GPU resources per ClientApp (0.25: four hospitals share a GPU), as Flower's Simulation Engine allows.
    one_scan_dispatch : bool
        Hand messages to the Ray workers with :mod:`simulation.fastvce` (one scan of the waiting messages per
        tick) instead of Flower's loop (one scan per hospital per tick); False only for ``bench/federation.py``'s
        baseline.
    shared_weights : bool
        Put each round's global weights into Ray's object store once (:mod:`simulation.shared_weights`)
        instead of pickling them into every message's task; False only for ``bench/federation.py``'s baseline.
    """
    os.environ.update(FLOWER_ENV)
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    if server_app is None:
        from server.app import app as server_app
    if client_app is None:
        from client.app import app as client_app

    from flwr.common.logger import update_console_handler

    # Colour codes only on a terminal; in OUT/logs/ (xr0_core/console.py) plain text with timestamps.
    tty = os.isatty(2)
    update_console_handler(colored=tty, timestamps=not tty)
    flat = cfg.to_flat()
    write_app_dir(app_dir, flat)
    if cfg.secagg.enabled:
        publish_signing_keys(cfg)
    if gpus_per_client < 0:
        raise ValueError(f"gpus_per_client must be >= 0, got {gpus_per_client}")
    # address "local": always a new local Ray instance. Ray's default (None) joins a cluster that somebody
    # started on this machine with `ray start` (found through /tmp/ray/ray_current_cluster), so a researcher's
    # simulation would silently run on, and share the resources of, another user's cluster.
    init_args: dict[str, Any] = {"address": "local", "include_dashboard": False, "configure_logging": False}
    if ray_address:
        init_args = {"address": ray_address, "configure_logging": False}  # Ray refuses num_cpus etc. here
    elif total_cpus:
        init_args["num_cpus"] = int(total_cpus)
    backend_config = {
        "client_resources": {"num_cpus": int(cpus_per_client), "num_gpus": float(gpus_per_client)},
        "init_args": init_args,
    }
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=dict(flat))
    from . import fastvce, shared_weights as shared

    dispatch = fastvce.install() if one_scan_dispatch else contextlib.nullcontext()
    by_reference = shared.install() if shared_weights else contextlib.nullcontext()
    try:
        # Flower's own dispatch loop scans every waiting message once per hospital per tick; its Ray backend
        # pickles the round's weights into every message's task.
        with dispatch, by_reference:
            _run_simulation(
                num_supernodes=num_sites,
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                client_app=client_app,
                server_app=server_app,
                backend_name="ray",
                backend_config=backend_config,
                server_app_context=context,
                app_dir=str(app_dir),
                is_app=True,
                verbose_logging=verbose,
            )
    finally:
        # Flower terminates its actors but leaves the local Ray cluster (raylet, GCS, idle workers) up for
        # the rest of the process; a library call must not leave processes behind. With ray_address this only
        # disconnects: an attached cluster keeps running.
        import ray

        if ray.is_initialized():
            ray.shutdown()
