"""Who and where this hospital is: name, data folder, state folder (node config in deployment, partition
in simulation).

Deployment node config (``flower-supernode --node-config '...'``; strings need TOML quotes):

====================  =========================================================================
``data-path``         folder of DICOM / PNG files, or with a ``manifest.csv`` (required)
``manifest``          explicit manifest path (optional)
``state-dir``         where the site keeps what outlives a run: local SSL state, privacy ledger, audit
                      log (default: ``~/.xr0/sites/<site-name>``; data folders are often read-only)
``site-name``         label for logs (default: the data folder's name); never sent to the server
``privacy-budget``    the hospital's total epsilon over all rounds and runs (needed when DP is on;
                      the coordinator cannot raise it; docs/privacy.md)
``privacy-delta``     the hospital's delta (default: run config privacy.target-delta)
====================  =========================================================================

Simulation: Flower gives ``partition-id``; hospital ``i`` is the ``i``-th sorted sub-folder of
``simulation.data-root`` and keeps its state in ``simulation.state-root/<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from xr0_core.config import XR0Config

PARTITION_ID = "partition-id"


class SiteConfigError(ValueError):
    """The node config does not say where the hospital's data is; the message says what to pass."""


@dataclass(frozen=True)
class Site:
    name: str
    data_dir: Path
    state_dir: Path
    manifest: Path | None = None
    partition_id: int | None = None  # simulation only
    privacy_budget: float | None = None  # node config privacy-budget (None: the ledger's, see xr0_core/privacy)
    privacy_delta: float | None = None  # node config privacy-delta


def resolve_site(node_config: Mapping[str, object], cfg: XR0Config) -> Site:
    """Site identity and folders from the node config (deployment) or the partition id (simulation)."""
    if "data-path" in node_config:
        data_dir = Path(str(node_config["data-path"])).expanduser().resolve()
        name = str(node_config.get("site-name") or data_dir.name)
        default_state = Path.home() / ".xr0" / "sites" / name
        state_dir = Path(str(node_config.get("state-dir") or default_state)).expanduser().resolve()
        manifest = node_config.get("manifest")
        from xr0_core.privacy.budget import node_budget

        budget, delta = node_budget(node_config)
        return Site(name, data_dir, state_dir, Path(str(manifest)).expanduser().resolve() if manifest else None,
                    privacy_budget=budget, privacy_delta=delta)
    if PARTITION_ID in node_config:
        pid = int(node_config[PARTITION_ID])  # type: ignore[arg-type]
        root = Path(cfg.simulation.data_root).expanduser()
        if not cfg.simulation.data_root or not root.is_dir():
            raise SiteConfigError(
                f"simulated partition {pid}: run config simulation.data-root {str(root)!r} is not a folder"
            )
        from xr0_core.data.index import hospital_dirs

        sites = hospital_dirs(root)
        if pid >= len(sites):
            raise SiteConfigError(
                f"simulated partition {pid} has no hospital folder: {root} holds {len(sites)} sub-folders; "
                "run with as many supernodes as hospital folders"
            )
        data_dir = sites[pid].resolve()
        state_root = Path(cfg.simulation.state_root or (root.parent / "state")).expanduser().resolve()
        return Site(data_dir.name, data_dir, state_root / data_dir.name, None, pid)
    raise SiteConfigError(
        "node config has no data-path: start the SuperNode with "
        "--node-config 'data-path=\"/path/to/xrays\" state-dir=\"/path/to/xr0-state\"'"
    )
