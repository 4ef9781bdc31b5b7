"""Run configuration: frozen dataclasses built once from Flower's flat run config.

Flower run configs are flat scalar mappings (``"train.batch-size" = 32``); nested TOML tables arrive
flattened with ``.``. :func:`from_flat` turns such a mapping into an :class:`XR0Config`, starting from a
preset (``preset = "cpu-tiny" | "vit-s" | "vit-b"``) and overriding field by field. Unknown keys and
wrongly typed values are errors that name the key and list the known ones. Defaults live here and nowhere
else; no config object is mutated after it is built (use :func:`dataclasses.replace`).

Key spelling: ``<section>.<field-with-hyphens>``, e.g. ``ssl.koleo-weight``, ``federation.rounds``.
Top-level keys: ``preset`` and ``seed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from xr0_core.flat_values import ValueKindError, coerce, toml_value

Scalar = bool | int | float | str


class ConfigError(ValueError):
    """A run-config key or value is wrong; the message says which and what is allowed."""


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and SSL heads.

    ``backbone`` names an entry of :data:`xr0_core.models.backbone.BACKBONES`.
    """

    backbone: str = "vit-tiny-p8"
    img_size: int = 64  # global crop side (pixels); the backbone is built for it
    drop_path: float = 0.0
    # DINO prototypes K. Sinkhorn targets share K prototypes equally over the 2B global views of a batch:
    # with K > 2B (64 at batch 16) they are near-random and the DINO loss sat at ln K for 1000 steps; 16 let
    # it fall and gave the better anatomy k-NN on 4 synthetic federations (docs/architecture.md). The vit
    # presets (batch >= 64 per device, long runs) use DINOv2's 16k / 65k.
    head_out_dim: int = 16
    head_hidden_dim: int = 256
    head_bottleneck_dim: int = 64
    head_layers: int = 3
    ibot_out_dim: int = 16  # iBOT patch prototypes (separate head, as DINOv2); same reasoning as head_out_dim
    # Start from a local pretrained backbone (timm / DINOv2 / RAD-DINO / XR-0 export; xr0_core/models/init_from.py)
    # instead of random init. init-sha256 names the file: every site checks it before training.
    init_from: str = ""
    init_sha256: str = ""


@dataclass(frozen=True)
class SSLConfig:
    """XR-0 self-supervision: DINO on CLS, iBOT on masked patches, KoLeo optional (D5)."""

    objective: str = "dino-ibot"
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1  # batch-coupled: DP mode drops this preset default, refuses an explicit other value
    n_local_crops: int = 4
    local_size: int = 32
    global_scale_min: float = 0.35
    local_scale_max: float = 0.35
    local_scale_min: float = 0.08
    mask_ratio_min: float = 0.1
    mask_ratio_max: float = 0.5
    mask_probability: float = 0.5  # share of global views that get masked
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_warmup: float = 0.04
    teacher_temp_warmup_frac: float = 0.3
    momentum_start: float = 0.95  # short CPU runs need a teacher that moves; vit presets use 0.992
    momentum_end: float = 1.0
    center_momentum: float = 0.9
    # "ema": DINO's center updated every step from the teacher batch (batch-coupled);
    # "frozen-per-round": center updated only between rounds (per-sample targets within a round, D3/D5);
    # "sinkhorn": Sinkhorn-Knopp equipartition over the batch, no center (DINOv2 default; batch-coupled).
    centering: str = "sinkhorn"


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation at one site (or in ``xr0 pretrain``)."""

    batch_size: int = 16
    lr: float = 0.01  # peak for batch 256, scaled linearly to the batch (DINO rule); vit presets use 5e-4
    min_lr: float = 1e-6
    warmup_frac: float = 0.1
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    grad_clip: float = 3.0  # non-private global-norm clipping; 0 disables
    local_steps: int = 20  # optimizer steps per federated round
    steps: int = 200  # steps of `xr0 pretrain`
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "auto"  # auto | fp32 | bf16 (bf16 autocast on CUDA only)
    num_workers: int = 0
    load_size: int = 96  # images are decoded once and cached with this shorter side
    # SSL health (xr0_core/train/health.py: RankMe, entropies, prototype usage) on a fixed probe batch every K
    # global steps and at the end of every training call; 0 disables. Not measured under DP (it reads private
    # images outside the accountant).
    health_every: int = 50
    # Where decoded images live (xr0_core/data/source.py): ram | prepared (memory-mapped shards in the site's
    # state folder, `xr0 site prepare`) | auto (prepared from 1000 images or when already prepared).
    image_cache: str = "auto"
    compile: bool = False  # torch.compile the student and teacher (CUDA; first steps are slow)
    log_every: int = 0  # gather step metrics on the host every K steps; 0: 1 on CPU, 25 on CUDA (no per-step sync)


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = 3
    min_replies: int = 1  # a round with fewer valid replies keeps the previous global weights
    # Large federations (issue 27): the share of connected hospitals sampled for a train / evaluate round
    # (Flower's own sampling, FedAvg's fraction_train / fraction_evaluate; never fewer than min-replies; an
    # evaluate fraction of 0 takes the train fraction), and how many must be connected before a round samples
    # (0: min-replies). Flower waits for min-available.
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_available: int = 0
    server_optimizer: str = "fedavg"  # fedavg | fedavgm | fedadam
    server_lr: float = 1.0
    server_momentum: float = 0.9
    max_update_norm: float = 0.0  # reject replies whose update L2 norm exceeds this; 0 disables
    # Reject replies whose update L2 norm exceeds this multiple of the global weights' norm; 0 disables. Why
    # 1.0: an honest round moves the shared weights by a few percent of their norm (docs/architecture.md), so
    # only an update as large as the model itself is refused (a hostile hospital scaling its update by 1e3).
    max_update_ratio: float = 1.0
    weight_cap: float = 50000.0  # plain rounds: num-examples above this count as this (as secagg.weight-cap)
    round_timeout: float = 3600.0  # seconds to wait for replies
    out_dir: str = "xr0-out"  # coordinator's folder: checkpoints, metrics, report, exported backbone
    resume: bool = False  # continue from the last complete round in out_dir (refused if the config differs)
    max_failed_rounds: int = 1  # stop (non-zero exit) after this many consecutive train rounds in which no
    # hospital's reply was usable; 0: never stop (rounds go on with the global weights unchanged)


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy at every site (D3; docs/privacy.md; owner: xr0_core/privacy/).

    The budget (epsilon) and delta are NOT here: they belong to each hospital's site policy
    (xr0_core/site/policy.py), so the coordinator cannot raise them. The run config may ask for more
    protection than a site's policy (DP on, more noise, a smaller delta), never less: a site refuses the
    round otherwise.
    """

    enabled: bool = False  # sample-level DP-SGD (per privacy unit: patient, else image)
    noise_multiplier: float = 0.0  # sigma; 0: each site calibrates it to spend its remaining budget over the run
    max_grad_norm: float = 1.0  # C: per-unit L2 clip norm (all views and images of one unit together)
    target_delta: float = 0.0  # ask every site for a delta at most this (0: each site's own policy delta)
    accountant: str = ""  # "": each site's own (rdp | prv in its policy); anything else must match the site's
    sample_rate: float = 0.0  # Poisson rate q per unit per step; 0: train.batch-size / number of units
    images_per_unit: int = 4  # at most this many images of a sampled unit per step (all clipped together)
    grad_sample_mode: str = "vmap"  # per-unit gradients: vmap (torch.func) | microbatch (one pass per unit)
    client_level: bool = False  # also clip each site's update and add Gaussian noise before it leaves
    client_clip: float = 1.0  # L2 bound of a site's update (new - global weights)
    client_noise_multiplier: float = 0.0  # noise std = client-noise-multiplier * client-clip (total over sites)


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (docs/secure-aggregation.md; protocol in xr0_core/secagg/)."""

    enabled: bool = False
    num_neighbours: int = 0  # 0: all-to-all (SecAgg); k: each site shares masks with k others (SecAgg+)
    threshold: int = 0  # shares to rebuild a secret; 0: strict majority of each site's k neighbours + itself
    quant_bits: int = 32  # ring Z_2^bits: 32 (upload = fp32 size) or 16 (half, coarser)
    quant_range: float = 2.0  # update coordinates (new - global weights) clipped to [-range, range], counted
    weight_cap: float = 0.0  # num-examples above this count as this; sets the mean's precision (0: 1 under DP, else 50000)
    stage_timeout: float = 600.0  # seconds per crypto stage (training uses federation.round-timeout)


@dataclass(frozen=True)
class EvalConfig:
    """Downstream evaluation (D8): what each hospital evaluates and how much its light heads may train."""

    every: int = 0  # federated evaluation every K rounds (0: after the last round only)
    knn_k: int = 10
    tasks: str = "all"  # "all", "probe" (anatomy probe only; "none": its old name), or families / task keys
    head_steps: int = 100  # optimizer steps per light head (frozen backbone features)
    head_lr: float = 1e-3
    head_batch_size: int = 32
    batch_size: int = 32  # images per backbone forward pass during feature extraction
    max_images: int = 0  # evaluate at most this many images per site (seeded subset; 0: all)
    audit: bool = False  # each site also audits the global weights (xr0_core/audit/task.py; only its scalars leave)
    # What the linear probes read (xr0_core/eval/readouts.py): cls | mean | cls+mean | cls+grid<k>. cls+grid4
    # reads the most on real knees for random-init and pretrained backbones alike (docs/ablations.md).
    readout: str = "cls+grid4"
    probe_c: str = "auto"  # the probes' L2 inverse strength: "auto" (3-fold CV by patient on train rows) or a number
    text_encoder: str = ""  # local BERT folder for text tasks ("": the bundled offline MiniLM)
    landmark_radius_px: float = 10.0  # success radius for landmarks, original pixels
    landmark_radius_mm: float = 4.0  # success radius when the pixel spacing is known


@dataclass(frozen=True)
class MultimodalConfig:
    """mXR-0: image-report pretraining with a BERT text tower (D6; xr0_core/ssl/multimodal.py).

    Sites without reports train the image objectives only, in the same federation.
    """

    enabled: bool = False
    text_encoder: str = ""  # local BERT folder (config.json, vocab.txt, weights); "": the bundled MiniLM-L6
    # Which text parameters train and leave a site: all | top-k (the top text-top-k layers) | projection (text
    # projection only, tower frozen) | frozen (tower and text projection fixed; only the image side learns).
    text_sharing: str = "projection"
    text_top_k: int = 1
    contrastive: str = "clip"  # clip (InfoNCE) | siglip (sigmoid) | none; batch-coupled: refused under DP
    contrastive_weight: float = 1.0
    caption_weight: float = 0.5  # image -> report decoder (per-sample: the DP-compatible image-text term)
    proj_dim: int = 128  # shared image-text embedding size
    max_tokens: int = 64  # reports are truncated to this many WordPiece tokens ([CLS] and [SEP] included)
    caption_width: int = 128
    caption_layers: int = 1


@dataclass(frozen=True)
class SimulationConfig:
    """Where a simulated federation finds its hospitals (ignored in deployment, where node config rules)."""

    data_root: str = ""  # one sub-folder per hospital; partition i takes the i-th sorted sub-folder
    state_root: str = ""  # site state directories (ledgers, local SSL state) as <state_root>/<site>
    # Per Ray actor (one process serves many simulated hospitals): decoded images of at most this many MB of
    # recently used hospitals stay in RAM (client/runtime.py; the newest always stays), so 1,000 hospitals
    # never pile up in one actor (issue 27).
    site_cache_mb: int = 1024


@dataclass(frozen=True)
class XR0Config:
    preset: str = "cpu-tiny"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    multimodal: MultimodalConfig = field(default_factory=MultimodalConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    def to_flat(self) -> dict[str, Scalar]:
        """The config as Flower-style flat scalar keys (inverse of :func:`from_flat`)."""
        flat: dict[str, Scalar] = {"preset": self.preset, "seed": self.seed}
        for section in _SECTIONS:
            sub = getattr(self, section)
            for f in fields(sub):
                flat[f"{section}.{_dash(f.name)}"] = getattr(sub, f.name)
        return flat

    def hash(self) -> str:
        """SHA-256 over the flat config, minus keys that may change on resume without changing the result
        (more rounds, device, where files live)."""
        flat = {k: v for k, v in self.to_flat().items()
                if k not in HASH_EXCLUDED and not k.startswith(HASH_EXCLUDED_SECTIONS)}
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = ("model", "ssl", "train", "federation", "privacy", "secagg", "eval", "multimodal", "simulation")

HASH_EXCLUDED = frozenset(
    {"federation.rounds", "federation.out-dir", "federation.resume", "federation.round-timeout", "train.device",
     "train.num-workers", "train.log-every", "model.init-from", "federation.max-failed-rounds"}
)

# Where files live and how evaluation is done never change the trained weights.
HASH_EXCLUDED_SECTIONS = ("simulation.", "eval.")

# A run-config value equal to this string means "whatever the preset says". pyproject.toml uses it for
# preset-dependent keys so that `flwr run . --run-config 'preset="vit-s"'` is not overridden by cpu-tiny
# numbers written there, while every key still exists (Flower rejects overrides of undeclared keys).
PRESET_DEFAULT = "preset"

# Preset overrides, applied on top of the dataclass defaults (which are the cpu-tiny values).
PRESETS: dict[str, dict[str, Scalar]] = {
    "cpu-tiny": {},
    "vit-s": {
        "ssl.koleo_weight": 0.0,
        "ssl.centering": "sinkhorn",
        "ssl.momentum_start": 0.992,
        "train.lr": 5e-4,
        "model.backbone": "vit-s-p16",
        "model.img_size": 224,
        "model.drop_path": 0.1,
        "model.head_out_dim": 16384,
        "model.head_hidden_dim": 2048,
        "model.head_bottleneck_dim": 256,
        "model.ibot_out_dim": 16384,
        "ssl.n_local_crops": 8,
        "ssl.local_size": 96,
        "train.batch_size": 64,
        "train.load_size": 256,
        "train.local_steps": 100,
    },
    "vit-b": {
        "ssl.koleo_weight": 0.0,
        "ssl.centering": "sinkhorn",
        "ssl.momentum_start": 0.992,
        "train.lr": 5e-4,
        "model.backbone": "vit-b-p16",
        "model.img_size": 224,
        "model.drop_path": 0.1,
        "model.head_out_dim": 65536,
        "model.head_hidden_dim": 2048,
        "model.head_bottleneck_dim": 256,
        "model.ibot_out_dim": 65536,
        "ssl.n_local_crops": 8,
        "ssl.local_size": 96,
        "train.batch_size": 64,
        "train.load_size": 256,
        "train.local_steps": 100,
    },
}


def _dash(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the key's default (:func:`xr0_core.flat_values.coerce`: the site policy's rules)."""
    kind = next((k for k in (bool, int, float, str) if isinstance(default, k)), None)
    if kind is None:
        raise ConfigError(f"config key {key!r}: unsupported value {value!r}")
    try:
        return coerce(value, kind)
    except ValueKindError as exc:
        want = "true/false" if kind is bool else exc.expected
        raise ConfigError(f"config key {key!r} expects {want}, got {value!r}") from None


def known_keys() -> list[str]:
    return sorted(XR0Config().to_flat())


def from_flat(flat: Mapping[str, Scalar] | None = None, **overrides: Scalar) -> XR0Config:
    """Build a validated config from flat keys.

    Parameters
    ----------
    flat : mapping of str to scalar, optional
        Flower run config or CLI overrides. Keys may use ``-`` or ``_`` inside field names.
        Keys that do not start with a known section or top-level name are errors.
    **overrides
        Extra flat keys (``from_flat(preset="vit-s")``).

    Returns
    -------
    XR0Config
    """
    merged: dict[str, Scalar] = dict(flat or {})
    merged.update(overrides)
    key = _flat_key(merged)
    if key is not None:
        with _FROM_FLAT_LOCK:
            hit = _FROM_FLAT.get(key)
        if hit is not None:
            return hit
    cfg = _build(merged)
    if key is not None:
        with _FROM_FLAT_LOCK:
            _FROM_FLAT[key] = cfg
            while len(_FROM_FLAT) > FROM_FLAT_CACHE:
                _FROM_FLAT.popitem(last=False)
    return cfg


# from_flat is a pure function of its flat keys (frozen dataclasses of scalars, no file or environment read),
# and a hospital parses the same run config for every message (2-3 times each: ~0.5 ms a parse, issue 27), so
# the last few results are kept. A key names each value by type and repr: 1, 1.0 and True (equal in Python)
# or 0.0 and -0.0 are different keys, since they may coerce or hash differently. Errors are never kept.
FROM_FLAT_CACHE = 16
_FROM_FLAT: "OrderedDict[tuple, XR0Config]" = OrderedDict()
_FROM_FLAT_LOCK = threading.Lock()


def _flat_key(merged: Mapping[str, Any]) -> tuple | None:
    if not all(isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in merged.items()):
        return None
    return tuple(sorted((k, type(v).__name__, repr(v)) for k, v in merged.items()))


def _build(merged: dict[str, Any]) -> XR0Config:
    """:func:`from_flat`'s work (``merged``: the flat keys with the overrides applied; it is consumed)."""
    preset = str(merged.pop("preset", "cpu-tiny"))
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    top: dict[str, Any] = {"preset": preset}
    base = XR0Config()
    known = set(known_keys())

    def put(key: str, value: Scalar) -> None:
        norm = key.strip()
        if norm == "seed":
            if value != PRESET_DEFAULT:
                top["seed"] = _coerce(norm, value, base.seed)
            return
        section, _, name = norm.partition(".")
        name = name.replace("-", "_")
        if section not in values or not name or not hasattr(getattr(base, section), name):
            raise ConfigError(
                f"unknown config key {key!r}; known keys: {', '.join(sorted(known))}"
            )
        default = getattr(getattr(base, section), name)
        if value == PRESET_DEFAULT:
            return  # keep the preset's value
        values[section][name] = _coerce(key, value, default)

    for key, value in PRESETS[preset].items():
        put(key, value)
    for key, value in merged.items():
        put(key, value)
    cfg = XR0Config(
        preset=preset,
        seed=top.get("seed", base.seed),
        **{s: replace(getattr(base, s), **values[s]) for s in _SECTIONS},
    )
    validate(cfg)
    return cfg


# eval.readout values (xr0_core/eval/readouts.py computes them; the name is checked here, in the base layer).
READOUT_NAMES = re.compile(r"cls|mean|cls\+mean|cls\+grid[1-9][0-9]?")


def _readout_ok(name: str) -> bool:
    return READOUT_NAMES.fullmatch(str(name)) is not None


def _probe_c_ok(value: str) -> bool:
    if str(value) == "auto":
        return True
    try:
        return float(value) > 0
    except ValueError:
        return False


def validate(cfg: XR0Config) -> None:
    """Cross-field checks; raise :class:`ConfigError` saying what to change."""
    t, s, m, f = cfg.train, cfg.ssl, cfg.model, cfg.federation
    checks = [
        (t.batch_size >= 2, "train.batch-size must be >= 2"),
        (t.local_steps >= 1, "train.local-steps must be >= 1"),
        (t.steps >= 1, "train.steps must be >= 1"),
        (t.health_every >= 0, "train.health-every must be >= 0 (0: no health measurements)"),
        (t.device in ("auto", "cuda", "cpu"), "train.device must be auto, cuda or cpu"),
        (t.precision in ("auto", "fp32", "bf16"), "train.precision must be auto, fp32 or bf16"),
        (t.image_cache in ("auto", "ram", "prepared"), "train.image-cache must be auto, ram or prepared"),
        (t.log_every >= 0, "train.log-every must be >= 0 (0: automatic)"),
        (not m.init_from or (len(m.init_sha256) == 64 and all(c in "0123456789abcdef" for c in m.init_sha256)),
         "model.init-from needs model.init-sha256 = the file's SHA-256 (64 lower-case hex digits; "
         "`sha256sum FILE`): every site checks it before training"),
        (f.rounds >= 1, "federation.rounds must be >= 1"),
        (f.min_replies >= 1, "federation.min-replies must be >= 1"),
        (f.max_failed_rounds >= 0, "federation.max-failed-rounds must be >= 0 (0: never stop)"),
        (f.max_update_norm >= 0 and math.isfinite(f.max_update_norm),
         "federation.max-update-norm must be >= 0 (0: no absolute bound)"),
        (f.max_update_ratio >= 0 and math.isfinite(f.max_update_ratio),
         "federation.max-update-ratio must be >= 0 (0: no bound relative to the global weights' norm)"),
        (f.weight_cap >= 0 and math.isfinite(f.weight_cap), "federation.weight-cap must be >= 0 (0: no cap)"),
        (cfg.simulation.site_cache_mb >= 0, "simulation.site-cache-mb must be >= 0 (0: keep only the hospital in use)"),
        (0 < f.fraction_train <= 1, "federation.fraction-train must be in (0, 1]: the share of connected "
         "hospitals sampled per train round (e.g. 0.05 trains 50 of 1000)"),
        (0 <= f.fraction_evaluate <= 1, "federation.fraction-evaluate must be in [0, 1]: the share of connected "
         "hospitals sampled per evaluation round (0: as federation.fraction-train)"),
        (f.min_available == 0 or f.min_available >= f.min_replies,
         f"federation.min-available must be 0 (= federation.min-replies) or >= federation.min-replies "
         f"({f.min_replies}); got {f.min_available}: a round waits until that many hospitals are connected"),
        (f.server_optimizer in ("fedavg", "fedavgm", "fedadam"),
         "federation.server-optimizer must be fedavg, fedavgm or fedadam"),
        (0.0 <= s.mask_ratio_min <= s.mask_ratio_max < 1.0,
         "ssl.mask-ratio-min <= ssl.mask-ratio-max < 1 required"),
        (s.centering in ("ema", "frozen-per-round", "sinkhorn"),
         "ssl.centering must be ema, frozen-per-round or sinkhorn"),
        (s.local_size <= m.img_size, "ssl.local-size must not exceed model.img-size"),
        (t.load_size >= m.img_size, "train.load-size must be >= model.img-size"),
        (s.dino_weight + s.ibot_weight + s.koleo_weight > 0, "at least one SSL loss weight must be > 0"),
        (cfg.privacy.noise_multiplier >= 0, "privacy.noise-multiplier must be >= 0 (0: calibrated to the site budget)"),
        # privacy: owned by xr0_core/privacy (DP engineer)
        (cfg.privacy.max_grad_norm > 0, "privacy.max-grad-norm must be > 0"),
        (cfg.privacy.accountant in ("", "rdp", "prv", "gdp"),
         "privacy.accountant must be empty (each site's own), rdp, prv or gdp (sites refuse gdp)"),
        (0 <= cfg.privacy.sample_rate <= 1, "privacy.sample-rate must be in [0, 1] (0: batch-size / units)"),
        (cfg.privacy.images_per_unit >= 1, "privacy.images-per-unit must be >= 1"),
        (cfg.privacy.grad_sample_mode in ("vmap", "microbatch"), "privacy.grad-sample-mode must be vmap or microbatch"),
        (cfg.privacy.client_clip > 0, "privacy.client-clip must be > 0"),
        (cfg.privacy.client_noise_multiplier >= 0, "privacy.client-noise-multiplier must be >= 0"),
        (cfg.eval.head_steps >= 1 and cfg.eval.head_batch_size >= 1 and cfg.eval.batch_size >= 1,
         "eval.head-steps, eval.head-batch-size and eval.batch-size must be >= 1"),
        (cfg.eval.head_lr > 0, "eval.head-lr must be > 0"),
        (cfg.eval.max_images >= 0, "eval.max-images must be >= 0 (0: all images)"),
        (_readout_ok(cfg.eval.readout), f"eval.readout {cfg.eval.readout!r}: use cls, mean, cls+mean or cls+grid<k>"),
        (_probe_c_ok(cfg.eval.probe_c), f"eval.probe-c {cfg.eval.probe_c!r}: use auto or a positive number"),
        (0 <= cfg.privacy.target_delta < 1, "privacy.target-delta must be in [0, 1) (0: each site's own delta)"),
        (cfg.secagg.num_neighbours >= 0, "secagg.num-neighbours must be >= 0 (0: all-to-all)"),
        (cfg.secagg.threshold == 0 or cfg.secagg.threshold >= 2,
         "secagg.threshold must be 0 (majority of share holders) or >= 2"),
        (cfg.secagg.quant_bits in (16, 32), "secagg.quant-bits must be 16 or 32"),
        (0 < cfg.secagg.quant_range < float("inf"), "secagg.quant-range must be a positive number"),
        (0 <= cfg.secagg.weight_cap < float("inf"), "secagg.weight-cap must be >= 0 (0: automatic)"),
        (cfg.secagg.stage_timeout > 0, "secagg.stage-timeout must be > 0 seconds"),
        *_multimodal_checks(cfg.multimodal),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _multimodal_checks(mm: MultimodalConfig) -> list[tuple[bool, str]]:
    return [
        (mm.text_sharing in ("all", "top-k", "projection", "frozen"),
         "multimodal.text-sharing must be all, top-k, projection or frozen"),
        (mm.text_top_k >= 1, "multimodal.text-top-k must be >= 1"),
        (mm.contrastive in ("clip", "siglip", "none"), "multimodal.contrastive must be clip, siglip or none"),
        (mm.contrastive_weight >= 0 and mm.caption_weight >= 0,
         "multimodal.contrastive-weight and multimodal.caption-weight must be >= 0"),
        (not mm.enabled or (mm.contrastive != "none" and mm.contrastive_weight > 0) or mm.caption_weight > 0,
         "multimodal.enabled needs an image-report term: multimodal.contrastive-weight > 0 (with contrastive "
         "clip or siglip) or multimodal.caption-weight > 0"),
        (mm.proj_dim >= 1 and mm.caption_width >= 8 and mm.caption_width % 4 == 0 and mm.caption_layers >= 1,
         "multimodal.proj-dim >= 1, multimodal.caption-width >= 8 (a multiple of 4) and "
         "multimodal.caption-layers >= 1 required"),
        (mm.max_tokens >= 4, "multimodal.max-tokens must be >= 4"),
    ]


def as_dict(cfg: XR0Config) -> dict[str, Any]:
    """Nested plain dict (for JSON reports and model cards)."""
    return dataclasses.asdict(cfg)


def pyproject_section() -> str:
    """The ``[tool.flwr.app.config]`` table declaring every key (``python -m xr0_core.config`` prints it).

    Flower only accepts ``--run-config`` overrides of declared keys, so pyproject.toml must list them all;
    keys that a preset sets are declared with the :data:`PRESET_DEFAULT` sentinel.
    """
    preset_keys = {k.split(".", 1)[0] + "." + _dash(k.split(".", 1)[1]) for p in PRESETS.values() for k in p}

    lines = [
        "[tool.flwr.app.config]",
        "# Every XR-0 run-config key; regenerate with `python -m xr0_core.config` (defaults: xr0_core/config.py).",
        f'# "{PRESET_DEFAULT}" = take the value of the chosen preset (cpu-tiny | vit-s | vit-b).',
    ]
    for key, value in sorted(XR0Config().to_flat().items()):
        lines.append(f'"{key}" = {toml_value(PRESET_DEFAULT if key in preset_keys else value)}')
    return "\n".join(lines)


if __name__ == "__main__":
    print(pyproject_section())
