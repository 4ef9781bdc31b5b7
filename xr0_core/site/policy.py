"""The site policy: what a hospital allows, in one TOML file in its state folder (DESIGN D14).

A hospital trusts its own node and this file, nothing else. The coordinator's run config may ask for *more*
protection than the policy (DP on where the policy does not require it, more noise, a smaller delta, secure
aggregation), never less; every conflict is a :class:`PolicyRefusal` raised before any training, whose
message reaches the coordinator's report as the site's reason.

This module is the only reader and writer of the file: privacy, secure aggregation, the ClientApp and the
deployment commands all call :func:`load_policy` / :func:`negotiate`.

File: ``<state-dir>/policy.toml`` (or the node config's ``policy``)::

    format = "xr0-site-policy/1"

    [privacy]
    required = true              # DP required (default: true as soon as a budget is set)
    budget = 8.0                 # lifetime epsilon over every round of every run
    delta = 1e-05
    accountant = "rdp"           # rdp | prv (gdp never enforces: it under-reports)
    run-cap = 2.0                # most epsilon one run may spend; "all": a run may spend all that is left.
                                 # Required with a budget (xr0 site policy refuses a budget without it)
    max-noise-multiplier = 10.0  # above this sigma the site refuses instead of training on noise
    unit = "auto"                # auto | patient | image: the privacy unit this site insists on
    audit-canaries = 0           # M > 0: M of the site's training patients become canaries of the one-run
                                 # audit, each trained on by a secret coin kept in <state-dir>/audit/

    [secagg]
    required = false             # refuse plain (unmasked) training rounds
    min-threshold = 2            # smallest Shamir threshold t the site accepts
    min-degree = "auto"          # fewest neighbours in the masking graph; auto: 2 (1 when only one peer is
                                 # pinned); one colluding neighbour exposes a degree-1 site
    peer-keys = []               # pinned signing keys (hex) of the other hospitals (their secagg-signing.pub)
    allow-unpinned = false       # take part without pinned keys (honest-but-curious coordinator only)
    max-colluders = 1            # hospitals that may sign every view: quorum > (pinned + this) / 2 signatures

    [release]
    train-metrics = ["*"]        # glob patterns of training metrics that may leave (DP narrows them further)
    eval-metrics = ["*"]         # glob patterns of evaluation metrics that may leave
    declared-examples = 0        # under DP, the weight sent as num-examples (0: 1, equal weights)
    epsilon = "rounded"          # rounded (up, to epsilon-step) | exact | withheld: how epsilon leaves
    epsilon-step = 0.1           # the rounding step of epsilon = "rounded"
    audit = true                 # the privacy audit's scalars (audit/*) may leave (false: none ever does)

    [evaluation]
    enabled = true               # answer federated evaluation requests at all
    after-budget-spent = false   # evaluate (held-out patients only) once the privacy budget is spent

    [apps]
    allowed-versions = []        # app bundles this site takes part with (empty: any); xr0 site app-version

References: Bonawitz et al. (2017) and Bell et al. (2020) for the secure-aggregation parameters; Opacus
accountants for ``accountant``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from xr0_core.atomic import atomic_write
from xr0_core.flat_values import ValueKindError, coerce, toml_value

POLICY_FILE = "policy.toml"
POLICY_FORMAT = "xr0-site-policy/1"
ENFORCING_ACCOUNTANTS = ("rdp", "prv")
UNITS = ("auto", "patient", "image")
EPSILON_RELEASES = ("rounded", "exact", "withheld")
RUN_CAP_ALL = "all"  # privacy.run-cap = "all": one run may spend whatever is left of the lifetime budget
AUDIT_METRIC_PREFIX = "audit/"  # the privacy audit's scalars (xr0_core/audit/task.py); release.audit gates them

# Under sample-level DP only these may leave a site (losses and timings are computed from private data
# without noise; ``sample-rate`` and ``noise-multiplier`` reveal the patient count).
DP_SAFE_TRAIN_METRICS = ("epsilon", "epsilon-run", "epsilon-withheld", "privacy-delta", "privacy-budget",
                         "privacy-run-cap", "dp-steps", "num-examples", "partition-id")


# Under secure aggregation these never leave a site in clear, whatever the allow-list says: each tells the
# coordinator the site's size, which the masked vector hides (the noise multiplier follows from the sampling
# rate B / N when the site calibrates it; ``secagg-weight-capped`` says num-examples > weight-cap). ``epsilon``
# does leave (each hospital's spend is what the run report shows), although with a noise multiplier fixed
# by the run config it also follows from B / N: a site that wants its size hidden then too drops it with
# ``release.train-metrics``.
SIZE_REVEALING_METRICS = ("num-examples", "sample-rate", "noise-multiplier", "dp-units", "dp-images",
                          "secagg-weight-capped")


class PolicyError(ValueError):
    """The policy file is unreadable or holds a bad value; the message names the file and the key."""


class PolicyRefusal(RuntimeError):
    """The site refuses this round: the run config asks for less protection than its policy allows.

    The message starts with ``site policy:`` and says which key conflicts and what to change.
    """


@dataclass(frozen=True)
class PrivacyPolicy:
    required: bool | None = None  # None: required iff a budget is set
    budget: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    run_cap: float = 0.0  # 0: not set; math.inf: "all" (one run may spend everything left)
    max_noise_multiplier: float = 10.0
    unit: str = "auto"
    audit_canaries: int = 0  # canary patients of the one-run audit (xr0_core/audit/canaries.py); 0: none

    @property
    def dp_required(self) -> bool:
        return bool(self.required) if self.required is not None else self.budget is not None

    @property
    def run_cap_missing(self) -> bool:
        """A lifetime budget without ``run-cap``: each run's noise would be calibrated to spend all that is left,
        so the first run spends the whole budget (:func:`run_cap_advice` says how to size one)."""
        return self.budget is not None and self.run_cap == 0

    @property
    def capped(self) -> bool:
        """Whether a finite per-run cap applies (not unset, not "all")."""
        return 0 < self.run_cap < math.inf


def run_cap_advice(privacy: PrivacyPolicy) -> str:
    """Why a budget needs a run cap and how to size one (the message of ``xr0 site policy``'s refusal)."""
    budget = privacy.budget if privacy.budget is not None else 8.0
    return (f"privacy.budget = {budget:g} is set without privacy.run-cap: every run calibrates its noise to spend "
            "what is left, so the first run would spend this hospital's whole lifetime budget. Size a cap: the "
            "budget divided by the runs it must last for (runs per year x years), e.g. "
            f"--set privacy.run-cap={budget / 4:g} for 4 runs; or confirm that one run may spend everything left "
            "with --set privacy.run-cap=all")


@dataclass(frozen=True)
class SecAggPolicy:
    required: bool = False
    min_threshold: int = 2
    # None (auto): 2, or 1 when the site pins a single peer (a two-hospital federation, where the other
    # hospital learns the sum minus its own update anyway). Why 2: with a single neighbour, that neighbour
    # alone (colluding with the coordinator) knows the site's one pairwise mask and holds the second share of
    # its self-mask secret (t = 2 of 2 holders), so the site's update is exposed without any protocol
    # deviation (docs/secure-aggregation.md, "The minimum degree"). See :meth:`effective_min_degree`.
    min_degree: int | None = None
    peer_keys: tuple[str, ...] = ()  # hex Ed25519 signing keys of the hospitals this site accepts as peers
    allow_unpinned: bool = False  # no peer keys: refuse secure rounds unless the operator acknowledges this
    # Hospitals that may collude with the coordinator and sign every view it shows them: the consistency
    # quorum is more than (pinned + max-colluders) / 2 signatures (xr0_core/secagg/protocol.py:
    # consistency_quorum). Higher resists more collusion and tolerates fewer missing signatures.
    max_colluders: int = 1

    def effective_min_degree(self, pinned: int | None) -> int:
        """``min-degree``, or when unset 2 (1 when ``pinned``, the number of pinned hospitals counting this
        one, is 2)."""
        if self.min_degree is not None:
            return self.min_degree
        return 1 if pinned == 2 else 2


@dataclass(frozen=True)
class ReleasePolicy:
    train_metrics: tuple[str, ...] = ("*",)
    eval_metrics: tuple[str, ...] = ("*",)
    declared_examples: int = 0
    epsilon: str = "rounded"  # rounded | exact | withheld (EPSILON_RELEASES)
    epsilon_step: float = 0.1
    audit: bool = True  # the audit evaluation task's scalars (audit/*) may leave, as eval-metrics also allows


@dataclass(frozen=True)
class EvaluationPolicy:
    enabled: bool = True
    after_budget_spent: bool = False


@dataclass(frozen=True)
class AppsPolicy:
    allowed_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class SitePolicy:
    """A hospital's policy (see the module docstring for the file and every key's meaning)."""

    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    secagg: SecAggPolicy = field(default_factory=SecAggPolicy)
    release: ReleasePolicy = field(default_factory=ReleasePolicy)
    evaluation: EvaluationPolicy = field(default_factory=EvaluationPolicy)
    apps: AppsPolicy = field(default_factory=AppsPolicy)
    path: str = ""  # where it was read from ("" = defaults, no file)

    # -- the derived rules every caller uses -------------------------------------------------------
    def train_metric_allowed(self, name: str, private: bool) -> bool:
        """May the training metric ``name`` leave? Under DP only :data:`DP_SAFE_TRAIN_METRICS` can."""
        if private and name not in DP_SAFE_TRAIN_METRICS:
            return False
        return _matches(name, self.release.train_metrics)

    def secagg_metric_allowed(self, name: str, private: bool) -> bool:
        """May ``name`` leave in clear beside a masked upload? Never one of :data:`SIZE_REVEALING_METRICS`."""
        return name not in SIZE_REVEALING_METRICS and self.train_metric_allowed(name, private)

    def eval_metric_allowed(self, name: str) -> bool:
        if name.startswith(AUDIT_METRIC_PREFIX) and not self.release.audit:
            return False
        return _matches(name, self.release.eval_metrics)


_SECTIONS = {"privacy": PrivacyPolicy, "secagg": SecAggPolicy, "release": ReleasePolicy,
             "evaluation": EvaluationPolicy, "apps": AppsPolicy}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _dash(name: str) -> str:
    return name.replace("_", "-")


def known_keys() -> list[str]:
    """Every ``section.key`` of the policy file."""
    return sorted(f"{s}.{_dash(f.name)}" for s, cls in _SECTIONS.items() for f in fields(cls))


# ---------------------------------------------------------------------------------------------- validation
def _check(policy: SitePolicy, where: str) -> SitePolicy:
    p, s = policy.privacy, policy.secagg
    problems = []
    if p.budget is not None and not (p.budget > 0 and math.isfinite(p.budget)):
        problems.append(f"privacy.budget must be a positive finite epsilon, got {p.budget!r}")
    if not 0 < p.delta < 1:
        problems.append(f"privacy.delta must be in (0, 1), got {p.delta!r} (well below 1 / number of patients)")
    if p.accountant not in ENFORCING_ACCOUNTANTS:
        problems.append(f"privacy.accountant must be one of {', '.join(ENFORCING_ACCOUNTANTS)}, got "
                        f"{p.accountant!r} (gdp under-reports epsilon and never enforces a budget)")
    if not p.run_cap >= 0:  # NaN fails too; math.inf is "all"
        problems.append(f"privacy.run-cap must be a positive epsilon or \"all\", got {p.run_cap!r}")
    if not p.max_noise_multiplier > 0:
        problems.append(f"privacy.max-noise-multiplier must be > 0, got {p.max_noise_multiplier!r}")
    if p.audit_canaries < 0:
        problems.append(f"privacy.audit-canaries must be >= 0 (canary patients of the one-run audit), got "
                        f"{p.audit_canaries}")
    if p.unit not in UNITS:
        problems.append(f"privacy.unit must be one of {', '.join(UNITS)}, got {p.unit!r}")
    if p.required is True and p.budget is None:
        problems.append("privacy.required = true needs privacy.budget (the lifetime epsilon)")
    if s.min_threshold < 2:
        problems.append(f"secagg.min-threshold must be >= 2 (t = 1 lets one share rebuild a secret), "
                        f"got {s.min_threshold}")
    if s.max_colluders < 0:
        problems.append(f"secagg.max-colluders must be >= 0, got {s.max_colluders}")
    if s.min_degree is not None and s.min_degree < 1:
        problems.append(f"secagg.min-degree must be >= 1 (or auto), got {s.min_degree}")
    bad_keys = [k for k in s.peer_keys if len(k) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in k)]
    if bad_keys:
        problems.append(f"secagg.peer-keys must be 64-hex-digit Ed25519 public keys (each hospital's "
                        f"secagg-signing.pub), got {bad_keys}")
    if policy.release.declared_examples < 0:
        problems.append("release.declared-examples must be >= 0")
    if policy.release.epsilon not in EPSILON_RELEASES:
        problems.append(f"release.epsilon must be one of {', '.join(EPSILON_RELEASES)}, got {policy.release.epsilon!r}")
    if not (policy.release.epsilon_step > 0 and math.isfinite(policy.release.epsilon_step)):
        problems.append(f"release.epsilon-step must be a positive number, got {policy.release.epsilon_step!r}")
    if problems:
        raise PolicyError(f"{where}: " + "; ".join(problems))
    return policy


_OPTIONAL = {"privacy.required": bool, "privacy.budget": float, "secagg.min-degree": int}  # None means "not set"


def _coerce(section: str, f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` for field ``f`` (:func:`xr0_core.flat_values.coerce`: the run config's rules); an optional field
    also takes "", "none" or "auto" for unset."""
    key = f"{section}.{_dash(f.name)}"
    kind = _OPTIONAL.get(key) or type(f.default if f.default is not dataclasses.MISSING else "")
    if key == "privacy.run-cap" and isinstance(value, str) and value.strip().lower() == RUN_CAP_ALL:
        return math.inf
    if key in _OPTIONAL and (value is None or (isinstance(value, str)
                                               and value.strip().lower() in ("", "none", "auto"))):
        return None
    try:
        return coerce(value, kind)
    except ValueKindError as exc:
        raise PolicyError(f"{where}: {key} = {value!r} must be {exc.expected}") from None


def from_mapping(raw: Mapping[str, Any], where: str = "site policy") -> SitePolicy:
    """A checked :class:`SitePolicy` from the parsed TOML (sections of dash-named keys)."""
    fmt = raw.get("format", POLICY_FORMAT)
    if fmt != POLICY_FORMAT:
        raise PolicyError(f"{where}: format {fmt!r} is not {POLICY_FORMAT!r}")
    unknown = sorted(set(raw) - set(_SECTIONS) - {"format"})
    if unknown:
        raise PolicyError(f"{where}: unknown section(s) {unknown}; known: {sorted(_SECTIONS)}")
    parts = {}
    for section, cls in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            raise PolicyError(f"{where}: [{section}] must be a table")
        by_dash = {_dash(f.name): f for f in fields(cls)}
        bad = sorted(set(table) - set(by_dash))
        if bad:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(f'{section}.{b}' for b in bad)}; known: "
                              f"{', '.join(f'{section}.{k}' for k in sorted(by_dash))}")
        parts[section] = cls(**{by_dash[k].name: _coerce(section, by_dash[k], v, where) for k, v in table.items()})
    return _check(SitePolicy(**parts), where)


# ---------------------------------------------------------------------------------------------- the file
def policy_path(state_dir: str | Path, node_config: Mapping[str, object] | None = None) -> Path:
    """The policy file: the node config's ``policy`` when given, else ``<state-dir>/policy.toml``."""
    named = (node_config or {}).get("policy")
    if named:
        return Path(str(named)).expanduser().resolve()
    return Path(state_dir).expanduser() / POLICY_FILE


def load_policy(path: str | Path) -> SitePolicy:
    """Read the policy file; a missing file gives the defaults (DP not required until a budget is set)."""
    path = Path(path)
    if not path.is_file():
        return SitePolicy()
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"site policy {path} is unreadable ({exc}); fix the file (`xr0 site policy "
                          "--state-dir DIR` shows the expected keys)") from None
    return dataclasses.replace(from_mapping(raw, where=f"site policy {path}"), path=str(path))


def to_toml(policy: SitePolicy) -> str:
    """The policy as TOML (every key written, so the file documents itself)."""
    lines = ["# XR-0 site policy: what this hospital allows. The coordinator's run config may ask for more",
             "# protection, never less. Edit with `xr0 site policy --state-dir DIR --set KEY=VALUE`.",
             f'format = "{POLICY_FORMAT}"']
    for section in _SECTIONS:
        lines += ["", f"[{section}]"]
        obj = getattr(policy, section)
        for f in fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue  # optional, unset
            if section == "privacy" and f.name == "run_cap" and value == math.inf:
                value = RUN_CAP_ALL
            lines.append(f"{_dash(f.name)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_policy(policy: SitePolicy, path: str | Path) -> SitePolicy:
    """Write ``policy`` atomically (mode 0600: it is the site's security configuration)."""
    path = Path(path)
    _check(policy, f"site policy {path}")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        tmp.write_text(to_toml(policy))
        tmp.chmod(0o600)

    atomic_write(path, write)
    return dataclasses.replace(policy, path=str(path))


def with_values(policy: SitePolicy, values: Mapping[str, Any]) -> SitePolicy:
    """``policy`` with ``section.key = value`` changes (strings are coerced; unknown keys refused)."""
    sections = {s: dict(dataclasses.asdict(getattr(policy, s))) for s in _SECTIONS}
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        if section not in _SECTIONS:
            raise PolicyError(f"unknown policy key {dotted!r}; known: {', '.join(known_keys())}")
        by_dash = {_dash(f.name): f for f in fields(_SECTIONS[section])}
        if key not in by_dash:
            raise PolicyError(f"unknown policy key {dotted!r}; known: {', '.join(known_keys())}")
        sections[section][by_dash[key].name] = _coerce(section, by_dash[key], value, "site policy")
    new = SitePolicy(**{s: _SECTIONS[s](**v) for s, v in sections.items()}, path=policy.path)
    return _check(new, "site policy")


NODE_BUDGET = "privacy-budget"
NODE_DELTA = "privacy-delta"


def node_budget(node_config: Mapping[str, object]) -> tuple[float | None, float | None]:
    """``privacy-budget`` and ``privacy-delta`` from a SuperNode's node config (None when absent)."""
    def num(key: str) -> float | None:
        if key not in node_config or node_config[key] in ("", None):
            return None
        try:
            return float(node_config[key])  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise PolicyError(f"node config {key} = {node_config[key]!r} is not a number") from None
    return num(NODE_BUDGET), num(NODE_DELTA)


def adopt_node_budget(path: Path, budget: float | None, delta: float | None) -> SitePolicy:
    """Merge a node config's ``privacy-budget`` / ``privacy-delta`` into the policy file.

    The node config is the hospital's own, so it is trusted like the file; where both set a value the
    *stricter* wins (the smaller epsilon, the smaller delta). A policy without a budget takes the node
    config's and is written, so the budget outlives the node config.
    """
    policy = load_policy(path)
    if budget is None and delta is None:
        return policy
    p = policy.privacy
    new_budget = budget if p.budget is None else (min(p.budget, budget) if budget is not None else p.budget)
    new_delta = min(p.delta, delta) if delta is not None else p.delta
    if new_budget == p.budget and new_delta == p.delta:
        return policy
    changed = dataclasses.replace(policy, privacy=dataclasses.replace(p, budget=new_budget, delta=new_delta))
    return save_policy(_check(changed, f"site policy {path}"), path)


# ---------------------------------------------------------------------------------------------- negotiation
@dataclass(frozen=True)
class PrivacyTerms:
    """What the site will do in this run, after the policy and the run config met.

    ``private`` is false only when neither asks for DP. ``delta`` and ``accountant`` are the site's (the run
    config may only lower delta).
    """

    private: bool
    sample_level: bool
    client_level: bool
    budget: float | None
    delta: float
    accountant: str
    run_cap: float
    max_noise_multiplier: float
    unit: str


def negotiate(policy: SitePolicy, cfg: Any) -> PrivacyTerms:
    """Meet the run config ``cfg`` (an :class:`~xr0_core.config.XR0Config`) with the site's policy.

    Raises
    ------
    PolicyRefusal
        The run config asks for less protection than the policy allows: DP off where it is required, an
        accountant that is not the site's (``gdp`` never), a larger delta, a fixed noise multiplier above
        the policy's maximum, plain aggregation where secure aggregation is required, or a secure-aggregation
        threshold below the policy's minimum.
    """
    p, rc = policy.privacy, cfg.privacy
    where = f" ({policy.path})" if policy.path else ""
    refuse = []
    dp = bool(rc.enabled or rc.client_level)
    if p.dp_required and not dp:
        refuse.append(f"this hospital requires differential privacy (budget epsilon {p.budget:g}), but the run "
                      "config has privacy.enabled = false: set privacy.enabled = true")
    if rc.accountant and rc.accountant != p.accountant:
        why = ("gdp under-reports epsilon and is never used to enforce a budget" if rc.accountant == "gdp"
               else f"this hospital accounts with {p.accountant}")
        refuse.append(f"the run config asks for privacy.accountant = {rc.accountant!r}: {why}; remove "
                      "privacy.accountant from the run config (each site uses its own)")
    delta = p.delta
    if rc.target_delta:
        if rc.target_delta > p.delta * (1 + 1e-12):
            refuse.append(f"the run config asks for privacy.target-delta = {rc.target_delta:g}, larger than this "
                          f"hospital's delta {p.delta:g}: a run may ask for a smaller delta, never a larger one")
        else:
            delta = float(rc.target_delta)
    if dp and rc.noise_multiplier > p.max_noise_multiplier:
        refuse.append(f"privacy.noise-multiplier = {rc.noise_multiplier:g} is above this hospital's "
                      f"max-noise-multiplier {p.max_noise_multiplier:g}: it would train on noise")
    if rc.client_level and rc.client_noise_multiplier <= 0:
        refuse.append("privacy.client-level needs privacy.client-noise-multiplier > 0")
    s = cfg.secagg
    if policy.secagg.required and not s.enabled:
        refuse.append("this hospital requires secure aggregation, but the run config has secagg.enabled = false")
    if s.enabled and s.threshold and s.threshold < policy.secagg.min_threshold:
        refuse.append(f"secagg.threshold = {s.threshold} is below this hospital's min-threshold "
                      f"{policy.secagg.min_threshold}")
    if refuse:
        raise PolicyRefusal("site policy" + where + ": " + "; ".join(refuse))
    if dp and p.budget is None:
        raise PolicyRefusal(
            "site policy: differential privacy is on but this hospital has no privacy budget: set it with "
            "`xr0 site policy --state-dir DIR --set privacy.budget=8` (or the SuperNode's --node-config "
            "'privacy-budget=8.0 privacy-delta=1e-5')")
    return PrivacyTerms(private=dp, sample_level=bool(rc.enabled), client_level=bool(rc.client_level),
                        budget=p.budget, delta=delta, accountant=p.accountant, run_cap=p.run_cap,
                        max_noise_multiplier=p.max_noise_multiplier, unit=p.unit)


# The refusals about who may ask what of the site (plain rounds, app bundles, pinned keys, once per round)
# live in xr0_core/site/refusals.py, which reads this module.
