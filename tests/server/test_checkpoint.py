import json

import numpy as np
import pytest

from server.checkpoint import KEEP_LAST, CheckpointError, ServerCheckpoint, load_latest, save_checkpoint


def _ckpt(r):
    return ServerCheckpoint(
        round=r, run_key="abc", config_hash="h", config_flat={"seed": 0},
        weights={"w": np.full((3,), r, np.float32)}, optimizer={"m/w": np.ones(3, np.float32)},
        optimizer_steps=r, history=[{"round": i} for i in range(1, r + 1)],
    )


def test_save_load_latest_and_prune(tmp_path):
    assert load_latest(tmp_path) is None
    for r in range(1, 6):
        save_checkpoint(tmp_path, _ckpt(r))
    got = load_latest(tmp_path)
    assert got.round == 5 and np.all(got.weights["w"] == 5) and got.optimizer_steps == 5
    assert len(got.history) == 5
    assert len(list(tmp_path.glob("round-*"))) == KEEP_LAST


def test_interrupted_write_leaves_previous_round_readable(tmp_path):
    save_checkpoint(tmp_path, _ckpt(1))
    # A crash after the round folder was written but before latest.json moved: the pointer still names round 1.
    (tmp_path / ".round-0002.tmp").mkdir()
    (tmp_path / ".round-0002.tmp" / "weights.safetensors").write_bytes(b"partial")
    assert load_latest(tmp_path).round == 1


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, _ckpt(1))
    (tmp_path / "round-0001" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_latest(tmp_path)
    assert json.loads((tmp_path / "latest.json").read_text())["round"] == 1
