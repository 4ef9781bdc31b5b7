"""One parser of flat values: the run config and the site policy read "3.0", "true" and friends alike."""

from __future__ import annotations

import tomllib

import pytest

from xr0_core.config import ConfigError, from_flat
from xr0_core.flat_values import ValueKindError, coerce, toml_value
from xr0_core.site.policy import PolicyError, SitePolicy, from_mapping, to_toml, with_values

# (config key, policy key) of the same kind, whose range checks accept every accepted value below
SAME_KIND = {
    int: ("train.local-steps", "secagg.min-threshold"),
    float: ("federation.round-timeout", "privacy.max-noise-multiplier"),
    bool: ("federation.resume", "secagg.required"),
    str: ("federation.out-dir", "privacy.accountant"),
}
# value, kind -> what both parsers make of it (None: refused)
CASES = [
    ("3", int, 3), ("3.0", int, 3), (" 3.0 ", int, 3), (3.0, int, 3), ("1e3", int, 1000), (4, int, 4),
    ("3.5", int, None), (3.5, int, None), (True, int, None), ("three", int, None),
    ("3", float, 3.0), ("2.5e-1", float, 0.25), (2, float, 2.0), (True, float, None), ("true", float, None),
    ("true", bool, True), (" TRUE ", bool, True), ("False", bool, False), (False, bool, False),
    ("1", bool, None), (1, bool, None), ("yes", bool, None),
    ("rdp", str, "rdp"), (5, str, None), (True, str, None),
]


def _config(key: str, value):
    return from_flat({"preset": "cpu-tiny", key: value}).to_flat()[key]


def _policy(key: str, value):
    section, _, name = key.partition(".")
    return getattr(getattr(with_values(SitePolicy(), {key: value}), section), name.replace("-", "_"))


@pytest.mark.parametrize("value,kind,expected", CASES)
def test_config_and_policy_parse_a_value_the_same_way(value, kind, expected):
    config_key, policy_key = SAME_KIND[kind]
    if expected is None:
        with pytest.raises(ValueKindError):
            coerce(value, kind)
        with pytest.raises(ConfigError, match=f"{config_key}.*expects"):
            _config(config_key, value)
        with pytest.raises(PolicyError, match=f"{policy_key} = .* must be"):
            _policy(policy_key, value)
        return
    got = coerce(value, kind)
    assert got == expected and type(got) is kind
    assert _config(config_key, value) == expected
    assert _policy(policy_key, value) == expected


def test_a_string_key_keeps_true_as_a_string():
    assert _config("federation.out-dir", "true") == "true"
    assert coerce("true", str) == "true"


def test_policy_optional_fields_take_unset_words():
    policy = with_values(SitePolicy(), {"privacy.budget": "8", "privacy.required": "none"})
    assert policy.privacy.budget == 8.0 and policy.privacy.required is None
    assert with_values(policy, {"privacy.budget": "auto"}).privacy.budget is None
    with pytest.raises(PolicyError, match="secagg.required = 'none' must be true or false"):
        with_values(SitePolicy(), {"secagg.required": "none"})  # not an optional field


def test_toml_writer_round_trips_policy_and_quotes_strings():
    policy = with_values(SitePolicy(), {"privacy.budget": 8, "apps.allowed-versions": 'a"b\\c, 0.1.0+abc'})
    back = from_mapping(tomllib.loads(to_toml(policy)))
    assert back == policy
    quoted = 'a"b\\'
    assert tomllib.loads("x = " + toml_value(quoted))["x"] == quoted
    assert tomllib.loads("x = " + toml_value((1.5, True)))["x"] == [1.5, True]
