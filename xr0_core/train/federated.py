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

from xr0_core.config import XR0Config
from xr0_core.runtime import derive_seed

log = logging.getLogger(__name__)

KEEP_STATES = 2
_ROUND_FILE = re.compile(r"round-(\d{5})\.safetensors$")


@dataclass(frozen=True)
class RoundSpec:
    """The server's instruction for one round (see strategies/fedavg_ssl.py for the contract)."""

    server_round: int
    global_step: int
    total_steps: int
    local_steps: int
    run_key: str


def initial_shared_state(cfg: XR0Config) -> dict[str, torch.Tensor]:
    """The round-0 global weights: a fresh XR0SSL built under a seed derived from the run seed.

    The global torch RNG is forked, so calling this leaves the caller's random stream untouched.
    """
    from xr0_core.ssl.multimodal import build_method  # XR0SSL, or mXR-0 with multimodal.enabled

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        method = build_method(cfg)
    return method.shared_state_dict()


def _state_dir(state_dir: Path, run_key: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", run_key):
        raise ValueError(f"run key {run_key!r} must be alphanumeric (it names a folder)")
    return state_dir / "ssl" / run_key


def latest_state_before(state_dir: Path, run_key: str, server_round: int) -> Path | None:
    """Newest saved local state of this run from a round before ``server_round`` (None: first round here)."""
    folder = _state_dir(state_dir, run_key)
    if not folder.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for path in folder.iterdir():
        m = _ROUND_FILE.match(path.name)
        if m and int(m.group(1)) < server_round and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), path)
    return best[1] if best else None


def _prune(folder: Path, keep: int) -> None:
    files = sorted(p for p in folder.iterdir() if _ROUND_FILE.match(p.name))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def run_local_round(
    trainer,  # a fresh xr0_core.train.state.SiteTrainer (no local history yet)
    global_weights: Mapping[str, torch.Tensor],
    spec: RoundSpec,
    state_dir: Path,
    *,
    progress: bool = False,
    privacy_budget: float | None = None,
    privacy_delta: float | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Load global weights and the site's previous state, train ``spec.local_steps``, save the new state.

    With ``privacy.enabled`` / ``privacy.client-level`` the round goes through the site's privacy ledger
    (xr0_core/privacy/round.py): budget check first (``PrivacyBudgetExceeded`` refuses the round), the release
    recorded before the weights are returned, and ``epsilon`` added to the metrics. ``privacy_budget`` /
    ``privacy_delta`` are the hospital's own node-config values (None: the ledger's).

    Returns
    -------
    shared : dict[str, Tensor]
        Updated shared parameter set (float32, CPU): what the site sends back.
    metrics : dict[str, float]
        Scalars only: loss parts, ``num-examples``, ``train-seconds``.
    """
    previous = latest_state_before(state_dir, spec.run_key, spec.server_round)
    # A fresh trainer's teacher starts as a copy of the received global weights; a saved state replaces it.
    trainer.load_shared_state_dict(dict(global_weights))
    if previous is not None:
        trainer.load_site_state(previous)
    cfg = trainer.cfg
    private = cfg.privacy.enabled or cfg.privacy.client_level
    if private:  # privacy (xr0_core/privacy): refuse before training when the budget would be exceeded
        from xr0_core.privacy.round import begin_private_round

        round_privacy = begin_private_round(trainer, spec, state_dir, privacy_budget, privacy_delta)
    metrics = trainer.train(
        spec.local_steps, start_step=spec.global_step, total_steps=spec.total_steps, progress=progress
    )
    folder = _state_dir(state_dir, spec.run_key)
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_site_state(folder / f"round-{spec.server_round:05d}.safetensors")
    _prune(folder, KEEP_STATES)
    shared = trainer.shared_state_dict()
    if private:  # ledger first, then the (clipped, noised) weights may leave
        shared, metrics = round_privacy.finish(shared, dict(global_weights), metrics)
    return shared, metrics
