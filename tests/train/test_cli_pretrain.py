"""`xr0 pretrain` end to end on a tiny PNG site (few steps: checks wiring, outputs and resume, not quality)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xr0_core.cli import pretrain, run
from xr0_core.data.splits import holdout_split as split_holdout

from tests.tiny import tiny_set_args
from tests.train.toydata import write_toy_site

TINY = tiny_set_args(**{"ssl.n-local-crops": 1, "model.head-hidden-dim": 32, "model.head-bottleneck-dim": 64})


def _pretrain(data: Path, out: Path, steps: int, *extra: str) -> int:
    return run(["pretrain", "--data", str(data), "--out", str(out), "--steps", str(steps), "--checkpoint-every", "2",
                "--json", *TINY, *extra], [pretrain])


def test_pretrain_writes_outputs(tmp_path, capsys):
    data = write_toy_site(tmp_path / "site", 15, seed=0, size=40, with_split=True)
    assert _pretrain(data, tmp_path / "a", 4) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 and summary["num_heldout_images"] == 3 and summary["num_train_images"] == 12
    for key in ("initial_loss", "final_loss", "knn_accuracy", "knn_accuracy_random", "linear_accuracy",
                "linear_accuracy_random"):
        assert isinstance(summary[key], float), key
    assert summary["knn_gain"] == pytest.approx(summary["knn_accuracy"] - summary["knn_accuracy_random"])
    low, high = summary["knn_gain_ci95"]
    assert low <= high and -1.0 <= low and high <= 1.0
    for name in ("metrics.jsonl", "checkpoint.safetensors", "site_state.safetensors", "backbone.safetensors",
                 "backbone.json", "curve.png", "summary.json"):
        assert (tmp_path / "a" / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # raw-pixel baseline beside random init, with the paired interval of the difference
    assert set(summary["baseline_pixels"]) == {"knn_accuracy", "linear_accuracy"}
    assert summary["knn_gain_vs_pixels"] == pytest.approx(summary["knn_accuracy"]
                                                          - summary["baseline_pixels"]["knn_accuracy"])
    low, high = summary["knn_gain_vs_pixels_ci95"]
    assert -1.0 <= low <= high <= 1.0
    # SSL health: measured at the end of every training call (checkpoint chunks of 2 steps), in the summary.
    # Four steps of a random-init ViT on varied images: features far from collapsed (RankMe well above 2), and
    # too few losses (< 10) for "not learning": the verdict must be ok, with no reason given.
    assert [r["step"] for r in rows if "health/rankme-cls" in r] == [1, 3]
    assert summary["health"]["last"]["rankme-cls"] > 2.0
    assert summary["health"]["status"] == "ok" and summary["health"]["reasons"] == []
    # A Hugging Face model card (YAML front matter + the required sections), like a federated run's.
    from xr0_core.model_card import REQUIRED_SECTIONS, parse_card

    meta, sections = parse_card((tmp_path / "a" / "model_card.md").read_text())
    assert meta["library_name"] == "timm" and "federated-learning" not in meta["tags"]
    assert [s for s in sections if s in REQUIRED_SECTIONS] == list(REQUIRED_SECTIONS)
    card = json.loads((tmp_path / "a" / "model_card.json").read_text())
    assert card["summary"][0]["task"] == "anatomy k-NN" and card["sites"]["local data"]["images"] == 12
    assert (tmp_path / "a" / "logs" / "pretrain.log").is_file()


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, capsys, monkeypatch):
    from xr0_core.train.trainer import SiteTrainer

    data = write_toy_site(tmp_path / "site", 9, seed=1, size=40, with_split=True)
    assert _pretrain(data, tmp_path / "one", 4) == 0

    original = SiteTrainer.train
    calls = []

    def crash_on_second_chunk(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies after the step-2 checkpoint
        return original(self, *a, **kw)

    monkeypatch.setattr(SiteTrainer, "train", crash_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(data, tmp_path / "two", 4)
    monkeypatch.setattr(SiteTrainer, "train", original)
    assert _pretrain(data, tmp_path / "two", 2, "--resume") == 2  # other --steps -> other schedules: refused
    assert "same --steps" in capsys.readouterr().err
    assert _pretrain(data, tmp_path / "two", 4, "--resume") == 0

    one = load_file(str(tmp_path / "one" / "checkpoint.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoint.safetensors"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "one") == rows(tmp_path / "two")


def test_holdout_keeps_patients_whole_and_is_seeded():
    class R:
        def __init__(self, i):
            self.patient_id, self.study_id, self.path, self.split = f"p{i // 2}", None, f"f{i}", None

    recs = [R(i) for i in range(40)]
    train, test = split_holdout(recs, seed=3)
    assert len(test) == 8 and not {r.patient_id for r in train} & {r.patient_id for r in test}
    assert [r.path for r in split_holdout(recs, seed=3)[1]] == [r.path for r in test]


def test_bad_override_is_a_user_error(tmp_path, capsys):
    data = write_toy_site(tmp_path / "site", 3, seed=0, size=40)
    assert run(["pretrain", "--data", str(data), "--out", str(tmp_path / "o"), "--set", "train.nope=1"],
               [pretrain]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert run(["pretrain", "--data", str(data), "--out", str(tmp_path / "o2"), "--resume"],
               [pretrain]) == 2


@pytest.fixture(autouse=True)
def _no_tty(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)


def test_heldout_anatomy_unseen_in_training_is_not_scored(tmp_path, capsys):
    # Every held-out image is an anatomy the training images lack: no neighbour can vote for it, so the
    # run says k-NN was not measurable instead of printing an accuracy of 0 or NaN.
    data = write_toy_site(tmp_path / "site", 10, seed=2, size=40, with_split=True)
    manifest = data / "manifest.csv"
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    a, s = header.index("anatomy"), header.index("split")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        if row[s] == "test":
            row[a] = "skull"
    manifest.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    assert _pretrain(data, tmp_path / "out", 1) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["knn_accuracy"] is None and summary["knn_test"] == 0 and "knn_gain_ci95" not in summary
    assert "k-NN skipped" in summary["knn_note"]


@pytest.mark.slow  # torchrun
def test_pretrain_on_two_processes_matches_one(tmp_path):
    """``--gpus 2`` (torchrun, gloo on CPU) trains the same checkpoint as one process; rank 0 writes the outputs."""
    data = write_toy_site(tmp_path / "site", 15, seed=0, size=40, with_split=True)
    per_sample = ["--set", "ssl.centering=frozen-per-round", "--set", "ssl.koleo-weight=0",
                  "--set", "model.drop-path=0"]
    assert _pretrain(data, tmp_path / "one", 4, *per_sample) == 0
    assert _pretrain(data, tmp_path / "two", 4, *per_sample, "--gpus", "2") == 0
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["num_train_images"] == 12
    one, two = (load_file(str(tmp_path / d / "checkpoint.safetensors")) for d in ("one", "two"))
    assert set(one) == set(two)
    for k in one:  # float summation order across ranks, four AdamW steps
        assert torch.allclose(two[k], one[k], atol=5e-5, rtol=1e-4), k
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # rank 0 alone wrote the metrics
    assert (tmp_path / "two" / "logs" / "pretrain-rank1.log").is_file()
    assert (tmp_path / "two" / "backbone.safetensors").is_file()


def test_pretrain_refuses_more_processes_than_the_batch_allows(tmp_path, capsys):
    data = write_toy_site(tmp_path / "site", 6, seed=0, size=40)
    assert _pretrain(data, tmp_path / "x", 2, "--gpus", "3") == 2
    assert "train.batch-size 4 must be a multiple of --gpus = 3" in capsys.readouterr().err


def test_pretrain_refuses_to_claim_differential_privacy(tmp_path, capsys):
    """xr0 pretrain has no DP step, ledger or accountant: privacy.enabled is refused, not written into a card."""
    data = write_toy_site(tmp_path / "site", 6, seed=0, size=40)
    assert _pretrain(data, tmp_path / "o", 2, "--set", "privacy.enabled=true") == 2
    assert "without differential privacy" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model_card.json").exists()
