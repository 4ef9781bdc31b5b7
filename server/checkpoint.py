"""Server checkpoints (D9): one folder per completed round, written atomically, plus a ``latest`` pointer.

Layout under ``<dir>``::

    round-0003/weights.safetensors     global shared weights (float32)
    round-0003/server_opt.safetensors  server-optimizer state (may be empty)
    round-0003/state.json              round, run key, config hash, flat config, optimizer steps, history
    latest.json                        {"round": 3, "path": "round-0003"}   (replaced last: the commit point)

A crash mid-write leaves at most an unreferenced temporary folder; ``latest.json`` only ever names a complete
round. Weights load through safetensors (no pickle).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from xr0_core.atomic import atomic_folder, atomic_write_json
from xr0_core.checkpoint import load_tensors, prune, save_tensors
from xr0_core.config import HASH_EXCLUDED_SECTIONS

KEEP_LAST = 3
_ROUND_FOLDER = re.compile(r"round-(\d{4,})")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (missing, corrupt, or from another configuration)."""


@dataclass
class ServerCheckpoint:
    round: int
    run_key: str
    config_hash: str
    config_flat: dict[str, Any]
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    optimizer_steps: int = 0
    history: list[dict] = field(default_factory=list)


def save_checkpoint(ckpt_dir: Path | str, ckpt: ServerCheckpoint) -> Path:
    """Write round ``ckpt.round`` as one folder (:func:`xr0_core.atomic.atomic_folder`), then move the ``latest``
    pointer to it; prune older rounds."""
    ckpt_dir = Path(ckpt_dir)
    name = f"round-{ckpt.round:04d}"
    state = {
        "round": ckpt.round,
        "run_key": ckpt.run_key,
        "config_hash": ckpt.config_hash,
        "config": ckpt.config_flat,
        "optimizer_steps": ckpt.optimizer_steps,
        "history": ckpt.history,
    }

    def write(tmp: Path) -> None:
        save_tensors(tmp / "weights.safetensors", ckpt.weights, header={"round": str(ckpt.round)})
        save_tensors(tmp / "server_opt.safetensors", ckpt.optimizer)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True, default=str))

    final = atomic_folder(ckpt_dir / name, write)
    atomic_write_json(ckpt_dir / "latest.json", {"round": ckpt.round, "path": name})
    prune(ckpt_dir, _ROUND_FOLDER, keep=KEEP_LAST)
    return final


def load_latest(ckpt_dir: Path | str) -> ServerCheckpoint | None:
    """The last complete round's checkpoint, or ``None`` when the folder holds none."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "latest.json"
    if not pointer.exists():
        return None
    try:
        latest = json.loads(pointer.read_text())
        folder = ckpt_dir / latest["path"]
        state = json.loads((folder / "state.json").read_text())
        weights = load_tensors(folder / "weights.safetensors", framework="np")
        opt_path = folder / "server_opt.safetensors"
        optimizer = load_tensors(opt_path, framework="np") if opt_path.exists() else {}
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint in {ckpt_dir} is unreadable ({exc}); remove it or start a new --out") from exc
    return ServerCheckpoint(
        round=int(state["round"]),
        run_key=str(state["run_key"]),
        config_hash=str(state["config_hash"]),
        config_flat=dict(state["config"]),
        weights=weights,
        optimizer=optimizer,
        optimizer_steps=int(state.get("optimizer_steps", 0)),
        history=list(state.get("history", [])),
    )


def describe_mismatch(saved: dict[str, Any], current: dict[str, Any], ignore: frozenset[str]) -> list[str]:
    """Human-readable list of config keys whose values differ (for the refusal message on resume)."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore or key.startswith(HASH_EXCLUDED_SECTIONS):
            continue
        if saved.get(key) != current.get(key):
            diffs.append(f"{key}: checkpoint {saved.get(key)!r} != now {current.get(key)!r}")
    return diffs


def resume_point(ckpt_dir: Path | str, cfg) -> ServerCheckpoint | None:
    """The checkpoint a run with ``cfg`` continues from, or None for a fresh start.

    Raises :class:`CheckpointError` when the folder holds a run and ``cfg.federation.resume`` is off (nothing
    is overwritten by accident), or when the checkpoint was made with another configuration.
    """
    from xr0_core.config import HASH_EXCLUDED

    ckpt = load_latest(ckpt_dir)
    if ckpt is None:
        return None
    if not cfg.federation.resume:
        raise CheckpointError(
            f"{ckpt_dir} already holds a run (last complete round {ckpt.round}); resume it with "
            "--resume (run config federation.resume=true) or choose another output folder"
        )
    if ckpt.config_hash != cfg.hash():
        diffs = describe_mismatch(ckpt.config_flat, cfg.to_flat(), HASH_EXCLUDED)
        raise CheckpointError(
            "the configuration differs from the checkpoint's, so resuming would mix two experiments: "
            + "; ".join(diffs[:8])
            + ". Use the original settings, or start a new run in another output folder."
        )
    return ckpt
