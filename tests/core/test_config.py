import tomllib
from pathlib import Path

import pytest

from xr0_core.config import PRESETS, ConfigError, XR0Config, from_flat, known_keys

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_cpu_tiny_and_round_trip_through_flat_keys():
    cfg = from_flat()
    assert cfg == XR0Config()
    assert from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_differ(preset):
    cfg = from_flat(preset=preset)
    assert cfg.preset == preset
    if preset != "cpu-tiny":
        assert cfg.model.backbone != XR0Config().model.backbone


def test_dash_and_underscore_keys_and_types():
    cfg = from_flat({"train.batch-size": 8, "train.lr": 1, "privacy.enabled": "true", "seed": 3})
    assert cfg.train.batch_size == 8 and cfg.train.lr == 1.0 and cfg.privacy.enabled is True and cfg.seed == 3


@pytest.mark.parametrize(
    "flat, words",
    [
        ({"train.bogus": 1}, "unknown config key 'train.bogus'"),
        ({"nosection": 1}, "unknown config key"),
        ({"train.batch-size": "eight"}, "expects an integer"),
        ({"privacy.enabled": 2}, "true/false"),
        ({"preset": "vit-xxl"}, "unknown preset"),
        ({"train.batch-size": 1}, "batch-size must be >= 2"),
        ({"federation.server-optimizer": "sgd"}, "server-optimizer"),
    ],
)
def test_bad_keys_and_values_say_what_is_wrong(flat, words):
    with pytest.raises(ConfigError, match=words):
        from_flat(flat)


def test_preset_sentinel_keeps_the_preset_value():
    cfg = from_flat({"preset": "vit-s", "train.batch-size": "preset", "model.backbone": "preset"})
    assert cfg.train.batch_size == 64 and cfg.model.backbone == "vit-s-p16"
    with pytest.raises(ConfigError):
        from_flat({"train.not-a-key": "preset"})


def test_hash_ignores_rounds_and_paths_but_not_training_settings():
    base = from_flat()
    assert from_flat({"federation.rounds": 9, "federation.out-dir": "/x", "simulation.data-root": "/d"}).hash() == base.hash()
    assert from_flat({"train.lr": 0.1}).hash() != base.hash()


def test_pyproject_run_config_declares_only_known_keys():
    """`flwr run --run-config` can only override declared keys, and every declared key must be one we know."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = set(project["tool"]["flwr"]["app"]["config"])
    assert declared == set(known_keys()), "regenerate the table with `python -m xr0_core.config`"
    from_flat(project["tool"]["flwr"]["app"]["config"])  # and it builds


def test_from_flat_remembers_a_parse_but_never_across_values_python_calls_equal():
    from xr0_core import config as config_module

    a = from_flat({"train.local-steps": 2, "train.lr": 0.5})
    assert from_flat({"train.lr": 0.5, "train.local-steps": 2}) is a  # same keys and values: the kept result
    # 2 == 2.0 == True in Python, yet True is refused where 2 is accepted: the key tells them apart
    with pytest.raises(ConfigError, match="expects an integer"):
        from_flat({"train.local-steps": True, "train.lr": 0.5})
    with pytest.raises(ConfigError, match="expects an integer"):  # and an error is never kept
        from_flat({"train.local-steps": True, "train.lr": 0.5})
    assert config_module._flat_key({"x": 0.0}) != config_module._flat_key({"x": -0.0})
    # the memo is bounded
    for i in range(config_module.FROM_FLAT_CACHE + 5):
        from_flat({"seed": i})
    assert len(config_module._FROM_FLAT) <= config_module.FROM_FLAT_CACHE
    assert from_flat({"seed": 3}).seed == 3 and from_flat({"train.local-steps": 2, "train.lr": 0.5}) == a
