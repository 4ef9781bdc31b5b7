"""What one hospital does in one federated round, framework-free (the ClientApp only converts records).

Local SSL state (teacher, centers, optimizer moments, step) outlives the round and the process: it is saved
after every round to ``<state_dir>/ssl/<run_key>/round-<r>.safetensors`` and, at the start of round ``r``,
the newest file with a round ``< r`` is loaded. Because batches and views are seeded by
(run seed, site, global step), a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from xr0_core.checkpoint import latest_before, prune

log = logging.getLogger(__name__)

KEEP_STATES = 2
_ROUND_FILE = re.compile(r"round-(\d{5})\.safetensors")


@dataclass(frozen=True)
class RoundSpec:
    """The server's instruction for one round (see strategies/fedavg_ssl.py for the contract)."""

    server_round: int
    global_step: int
    total_steps: int
    local_steps: int
    run_key: str


def _state_dir(state_dir: Path, run_key: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", run_key):
        raise ValueError(f"run key {run_key!r} must be alphanumeric (it names a folder)")
    return state_dir / "ssl" / run_key


def latest_state_before(state_dir: Path, run_key: str, server_round: int) -> Path | None:
    """Newest saved local state of this run from a round before ``server_round`` (None: first round here)."""
    return latest_before(_state_dir(state_dir, run_key), _ROUND_FILE, server_round)


def _prune(folder: Path, keep: int) -> None:
    for old in prune(folder, _ROUND_FILE, keep):
        old.with_suffix(".json").unlink(missing_ok=True)  # sidecars of earlier versions


def start_round(trainer, global_weights: Mapping[str, torch.Tensor], spec: RoundSpec, state_dir: Path) -> None:
    """Load the global weights into a fresh trainer, then the site's newest local state of this run."""
    previous = latest_state_before(state_dir, spec.run_key, spec.server_round)
    # A fresh trainer's teacher starts as a copy of the received global weights; a saved state replaces it.
    trainer.load_shared_state_dict(dict(global_weights))
    if previous is not None:
        trainer.load_site_state(previous)


def save_round_state(trainer, spec: RoundSpec, state_dir: Path) -> Path:
    """Save the site's local state after round ``spec.server_round`` (keeps the newest ``KEEP_STATES``)."""
    folder = _state_dir(state_dir, spec.run_key)
    folder.mkdir(parents=True, exist_ok=True)
    path = trainer.save_site_state(folder / f"round-{spec.server_round:05d}.safetensors")
    _prune(folder, KEEP_STATES)
    return path


def run_local_round(
    trainer,  # a fresh xr0_core.train.trainer.SiteTrainer (no local history yet)
    global_weights: Mapping[str, torch.Tensor],
    spec: RoundSpec,
    state_dir: Path,
    *,
    progress: bool = False,
    on_step=None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A plain (non-private) local round: load global weights and state, train ``spec.local_steps``, save.

    ``on_step``: passed to ``trainer.train`` (an exception it raises ends the round before anything is saved).

    A private round is composed by :func:`xr0_core.site.round.run_site_round` from the same pieces
    (:func:`start_round`, ``trainer.train``, :func:`save_round_state`) around the privacy ledger.

    Returns
    -------
    shared : dict[str, Tensor]
        Updated shared parameter set (float32, CPU): what the site sends back.
    metrics : dict[str, float]
        Scalars only: loss parts, ``num-examples``, ``train-seconds``.
    """
    start_round(trainer, global_weights, spec, state_dir)
    metrics = trainer.train(
        spec.local_steps, start_step=spec.global_step, total_steps=spec.total_steps, progress=progress,
        on_step=on_step,
    )
    save_round_state(trainer, spec, state_dir)
    return trainer.shared_state_dict(), metrics
