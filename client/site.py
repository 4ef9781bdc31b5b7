"""Who and where this hospital is: name, data folder, state folder (node config in deployment, partition
in simulation).

Deployment node config (``flower-supernode --node-config '...'``; strings need TOML quotes):

====================  =========================================================================
``data-path``         folder of DICOM / PNG files, or with a ``manifest.csv`` (required)
``state-dir``         the hospital's state folder: site policy, privacy ledger, audit log, local SSL
                      state (required: it is the site's identity, so it must never follow the data
                      path; data folders are also often read-only)
``manifest``          explicit manifest path (optional)
``policy``            the site policy file (default ``<state-dir>/policy.toml``)
``site-name``         label for logs (default: the data-path's last folder name as given, symlinks
                      not followed); never sent to the server
``privacy-budget``    merged into the site policy's privacy.budget (the stricter value wins)
``privacy-delta``     merged into the site policy's privacy.delta (the stricter value wins)
``gpus``              data-parallel processes of the local round (default 1; one per GPU on CUDA,
                      gloo processes on CPU): xr0_core/site/launch/parallel.py
====================  =========================================================================

Simulation: Flower gives ``partition-id``; hospital ``i`` is the ``i``-th entry of
:func:`xr0_core.data.index.hospital_dirs` over ``simulation.data-root``, named by that entry (a symlinked
hospital keeps its link's name) and keeping its state in ``simulation.state-root/<name>``.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from xr0_core.config import XR0Config

PARTITION_ID = "partition-id"


class SiteConfigError(ValueError):
    """The node config does not say where the hospital's data is; the message says what to pass."""


@dataclass(frozen=True)
class Site:
    name: str
    data_dir: Path  # resolved (symlinks followed) for reading; never used to name the site or its state
    state_dir: Path
    manifest: Path | None = None
    partition_id: int | None = None  # simulation only
    privacy_budget: float | None = None  # node config privacy-budget (merged into the site policy)
    privacy_delta: float | None = None  # node config privacy-delta
    policy_file: Path | None = None  # node config policy (None: <state-dir>/policy.toml)
    gpus: int = 1  # node config gpus: data-parallel processes of the local round

    def policy(self):
        """The site policy (:func:`xr0_core.site.state.site_policy`), node-config budget merged in."""
        from xr0_core.site.state import site_policy

        node = {"policy": str(self.policy_file)} if self.policy_file else {}
        return site_policy(self.state_dir, node, budget=self.privacy_budget, delta=self.privacy_delta)


def site_name_of(path: Path) -> str:
    """A hospital's name from its data folder *as given*: the last path component, symlinks not followed
    (a link ``mhh -> /mnt/pacs/covid-chest-mhh`` is hospital ``mhh``). The one naming rule of simulate, the
    ClientApp, the coordinator's report and the state folder."""
    return Path(str(path).rstrip("/")).name


def node_gpus(node_config: Mapping[str, object]) -> int:
    """Node config ``gpus`` (default 1) as a whole number >= 1.

    Raises
    ------
    SiteConfigError
        Not a whole number >= 1 (the message gives the line to pass).
    """
    value = node_config.get("gpus", 1)
    try:
        gpus = int(str(value))  # TOML gives an int; "2.5", true and "two" are refused
    except ValueError:
        gpus = 0
    if gpus < 1:
        raise SiteConfigError(f"node config gpus = {value!r}: give the number of GPUs (data-parallel processes) "
                              "the hospital's local round may use, e.g. --node-config '... gpus=2' (default 1)")
    return gpus


# Sites resolved while one message is handled (None outside :func:`one_message`): resolving a simulated hospital
# lists the federation root and reads its identity file, and a message asked for it twice (the handler, then
# the audit log's mod) - 100 times a round each at 100 hospitals (issue 27).
_MESSAGE_SITES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("xr0_message_sites", default=None)


@contextlib.contextmanager
def one_message() -> Iterator[None]:
    """Inside the block, :func:`resolve_site` resolves each (node config, data/state roots) once; the block is
    one message's handling (``client/audit.py``'s mod), so nothing is remembered from one message to the next."""
    token = _MESSAGE_SITES.set({})
    try:
        yield
    finally:
        _MESSAGE_SITES.reset(token)


def resolve_site(node_config: Mapping[str, object], cfg: XR0Config) -> Site:
    """:func:`_resolve_site`, once per message inside :func:`one_message` (same arguments -> same Site)."""
    memo = _MESSAGE_SITES.get()
    if memo is None:
        return _resolve_site(node_config, cfg)
    key = (tuple(sorted((str(k), repr(v)) for k, v in node_config.items())),
           cfg.simulation.data_root, cfg.simulation.state_root)
    site = memo.get(key)
    if site is None:
        site = memo[key] = _resolve_site(node_config, cfg)
    return site


def _resolve_site(node_config: Mapping[str, object], cfg: XR0Config) -> Site:
    """Site identity and folders from the node config (deployment) or the partition id (simulation).

    Raises
    ------
    SiteConfigError
        No ``data-path`` / ``state-dir`` in deployment (the message gives the node-config line to add), or a
        simulated partition without a hospital folder.
    """
    if "data-path" in node_config:
        given = Path(str(node_config["data-path"])).expanduser()
        name = str(node_config.get("site-name") or site_name_of(given))
        if not node_config.get("state-dir"):
            raise SiteConfigError(
                "node config has no state-dir: the hospital's privacy ledger, policy and audit log live there, "
                "and it must not follow the data path. Start the SuperNode with --node-config "
                f"'data-path=\"{node_config['data-path']}\" state-dir=\"/var/lib/xr0/{name}\"' (any folder "
                "that stays with this hospital; keep it for every future run)")
        state_dir = Path(str(node_config["state-dir"])).expanduser().resolve()
        manifest = node_config.get("manifest")
        policy = node_config.get("policy")
        from xr0_core.site.policy import node_budget

        budget, delta = node_budget(node_config)
        site = Site(name, given.resolve(), state_dir,
                    Path(str(manifest)).expanduser().resolve() if manifest else None,
                    privacy_budget=budget, privacy_delta=delta,
                    policy_file=Path(str(policy)).expanduser().resolve() if policy else None,
                    gpus=node_gpus(node_config))
    elif PARTITION_ID in node_config:
        pid = int(node_config[PARTITION_ID])  # type: ignore[arg-type]
        root = Path(cfg.simulation.data_root).expanduser()
        if not cfg.simulation.data_root or not root.is_dir():
            raise SiteConfigError(
                f"simulated partition {pid}: run config simulation.data-root {str(root)!r} is not a folder"
            )
        from xr0_core.data.index import hospital_dirs_cached

        sites = hospital_dirs_cached(root)  # listed again when the root changes (every message asks)
        if pid >= len(sites):
            raise SiteConfigError(
                f"simulated partition {pid} has no hospital folder: {root} holds {len(sites)} sub-folders; "
                "run with as many supernodes as hospital folders"
            )
        name = site_name_of(sites[pid])
        from xr0_core.data.synthetic.lazy import materialize

        materialize(sites[pid])  # a planned synthetic hospital is written when first used (issue 27)
        state_root = Path(cfg.simulation.state_root or (root.parent / "state")).expanduser().resolve()
        site = Site(name, sites[pid].resolve(), state_root / name, None, pid)
    else:
        raise SiteConfigError(
            "node config has no data-path: start the SuperNode with "
            "--node-config 'data-path=\"/path/to/xrays\" state-dir=\"/path/to/xr0-state\"'"
        )
    from xr0_core.site.state import ensure_identity

    ensure_identity(site.state_dir, site.name, site.data_dir)
    return site
