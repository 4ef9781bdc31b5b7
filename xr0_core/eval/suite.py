"""The evaluation suite: every applicable downstream task for one backbone and the random-init baseline (D8).

Used by a hospital in federated evaluation (:func:`evaluate_backbone` with the global weights, nothing but
the scalars of :meth:`EvalResult.flat_metrics` leaves), and by a researcher through ``xr0 evaluate``.

Flow: decode each record once into its letterbox view (:mod:`.tasks.base`) -> decide the tasks from the
columns present (absent columns are listed in ``skipped``, never faked) -> build every task's targets once
(bad annotations fail with their manifest row) -> for each backbone, one batched no-grad pass for CLS and
patch tokens, then each task's light head on those features. Heads start from the same seed for every
backbone, so the pretrained-vs-random difference is the backbone's alone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from xr0_core.config import XR0Config
from xr0_core.eval.baseline import PIXELS, backbone_from_shared, pixel_applicable, pixel_features, random_init_backbone
from xr0_core.eval.tasks import FAMILY_ORDER, TASK_FAMILIES, family_of
from xr0_core.eval.tasks.base import (
    EvalDataError,
    EvalSet,
    HeadBudget,
    TaskContext,
    TextCache,
    build_eval_set,
    extract,
)
from xr0_core.runtime import derive_seed, resolve_device

log = logging.getLogger(__name__)

PRETRAINED, RANDOM = "pretrained", "random"
NUM_EXAMPLES = "num-examples"
RANDOM_TAG = "random"
PIXELS_TAG = "pixels"
CI_TAG = "ci"  # <task>/ci/<metric>/<part>: the paired interval of evaluated minus random init
CI_PIXELS_TAG = "ci-pixels"  # <task>/ci-pixels/<metric>/<part>: evaluated minus the raw-pixel baseline
CI_PARTS = ("diff", "low", "high", "se", "units")
# The cheap pretrain-time probe, by name: anatomy recognition on frozen CLS features (k-NN and linear probe).
# ``xr0 pretrain``, ``xr0 simulate --compare-pooled`` and ``eval.tasks = probe`` run it through this suite.
PROBE = "probe"
PROBE_TASKS = ("classification/anatomy",)
_DEPRECATED_NONE = [True]  # say once per process that eval.tasks = none is now "probe"


def paired_intervals(main: Mapping[str, dict], baseline: Mapping[str, dict], data: EvalSet,
                     seed: int) -> dict[str, dict[str, Any]]:
    """Per task: ``main`` minus ``baseline`` on the task's per-unit metric, paired bootstrap over patients.

    ``main`` / ``baseline`` map task -> ``(per_row, rows)`` of :class:`TaskOutput`. Images of one patient
    are resampled together (record ``patient_id``; a record without one is its own patient).
    """
    from xr0_core.eval.metrics import paired_bootstrap

    out: dict[str, dict[str, Any]] = {}
    for task in sorted(set(main) & set(baseline)):
        (per_a, rows_a), (per_b, rows_b) = main[task], baseline[task]
        for metric in [m for m in per_a if m in per_b]:  # the task's first per-unit metric is its interval's
            a, b = per_a[metric], per_b[metric]
            if len(a) == 0 or len(a) != len(b) or list(rows_a) != list(rows_b):
                continue  # units differ between backbones (should not happen): no pairing, no interval
            groups = [getattr(data.records[i], "patient_id", None) or f"row-{i}" for i in rows_a]
            out[task] = {"metric": metric, **paired_bootstrap(a, b, groups, seed=derive_seed(seed, "ci", task))}
            break
    return out


@dataclass
class EvalResult:
    """Metrics of the evaluated backbone and of the random-init baseline, per task.

    Attributes
    ----------
    tasks, baseline_random : dict task -> {metric: value}
        ``nan`` values are left out (a metric that is not measurable on this data is absent).
    baseline_pixels : dict task -> {metric: value}
        The raw-pixel baseline (:mod:`xr0_core.eval.baseline`), for the tasks it applies to
        (classification, image-image retrieval).
    counts : dict task -> test examples scored
    skipped : list of str, one reason per task (or family) that did not run
    examples : dict backbone -> task -> list of qualitative examples (only with ``examples > 0``; these
        hold pixels and text and must never leave a hospital)
    intervals : dict task -> {"metric", "diff", "low", "high", "se", "units"}
        Evaluated minus random-init backbone on one per-unit metric, with a paired bootstrap 95 % interval
        over patients (:func:`paired_intervals`).
    intervals_pixels : dict task -> same fields
        Evaluated backbone minus the raw-pixel baseline, same pairing (tasks the pixel baseline applies to).
    images : int, decodable images evaluated; ``undecodable``: images skipped with their reasons
    """

    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_random: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_pixels: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    examples: dict[str, dict[str, list]] = field(default_factory=dict)
    images: int = 0
    undecodable: list[tuple[str, str]] = field(default_factory=list)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    intervals_pixels: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: EvalSet | None = field(default=None, repr=False)  # the evaluated set (local only, never serialised)

    def to_json(self) -> dict[str, Any]:
        """``{"tasks", "baseline_random", "baseline_pixels", "skipped", "counts", "images", "intervals",
        "intervals_pixels"}`` (the ``xr0 evaluate --json`` body)."""
        return {"tasks": self.tasks, "baseline_random": self.baseline_random,
                "baseline_pixels": self.baseline_pixels, "skipped": list(self.skipped),
                "counts": dict(self.counts), "images": self.images, "intervals": dict(self.intervals),
                "intervals_pixels": dict(self.intervals_pixels)}

    def flat_metrics(self) -> dict[str, float]:
        """Flat scalar keys for a Flower ``MetricRecord``: ``<task>/<metric>``, ``<task>/random/<metric>`` and
        ``<task>/pixels/<metric>``, ``<task>/num-examples`` (the weight of this site's numbers for that task in the federated mean)."""
        out: dict[str, float] = {}
        for task, values in self.tasks.items():
            out.update({f"{task}/{m}": float(v) for m, v in values.items()})
            out[f"{task}/{NUM_EXAMPLES}"] = float(self.counts.get(task, 0))
        for task, values in self.baseline_random.items():
            out.update({f"{task}/{RANDOM_TAG}/{m}": float(v) for m, v in values.items()})
            out.setdefault(f"{task}/{NUM_EXAMPLES}", float(self.counts.get(task, 0)))
        for task, values in self.baseline_pixels.items():
            out.update({f"{task}/{PIXELS_TAG}/{m}": float(v) for m, v in values.items()})
            out.setdefault(f"{task}/{NUM_EXAMPLES}", float(self.counts.get(task, 0)))
        for tag, intervals in ((CI_TAG, self.intervals), (CI_PIXELS_TAG, self.intervals_pixels)):
            for task, ci in intervals.items():  # <task>/<tag>/<metric>/{diff,low,high,se,units}
                for part in CI_PARTS:
                    out[f"{task}/{tag}/{ci['metric']}/{part}"] = float(ci[part])
        return out


def select_tasks(spec: str | Sequence[str] | None, planned: Sequence[str]) -> list[str]:
    """The planned tasks matching ``spec``: ``None`` / ``"all"``, :data:`PROBE` (the anatomy probe; none when
    the data has fewer than two anatomies), or comma-separated families or task keys. ``"none"`` (the old name
    of the probe) still works, with a deprecation line.

    Raises
    ------
    ValueError
        A name that is neither a known family nor a prefix of a planned task (lists the known ones).
    """
    if spec is None:
        return list(planned)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names or names == ["all"]:
        return list(planned)
    if names == ["none"]:
        if _DEPRECATED_NONE.pop() if _DEPRECATED_NONE else False:
            log.warning("eval.tasks = none is deprecated: use eval.tasks = probe (the anatomy probe, now the "
                        "suite's classification/anatomy task)")
        names = [PROBE]
    chosen = []
    for name in names:
        if name == PROBE:
            chosen += [t for t in planned if t in PROBE_TASKS]
        elif name in TASK_FAMILIES:
            chosen += [t for t in planned if t.split("/", 1)[0] == name]
        elif any(t == name or t.startswith(name + "/") for t in planned):
            chosen += [t for t in planned if t == name or t.startswith(name + "/")]
        else:
            raise ValueError(f"unknown evaluation task {name!r}; families: {', '.join(FAMILY_ORDER)}, or {PROBE}; "
                             f"tasks this data allows: {', '.join(planned) or '(none)'}")
    return list(dict.fromkeys(chosen))


def probe_only(spec: str | Sequence[str] | None) -> bool:
    """Whether ``spec`` asks for the anatomy probe alone (``probe``, or its old name ``none``)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec or []) if s.strip()]
    return names in ([PROBE], ["none"])


def with_split(train: Sequence[Any], test: Sequence[Any]) -> list[Any]:
    """``train`` and ``test`` records as one list whose ``split`` says which is which (the suite fits its heads
    on the first, scores the second), for callers that hold their own hold-out (``xr0 pretrain``)."""
    import dataclasses

    return [dataclasses.replace(r, split="train") for r in train] + \
           [dataclasses.replace(r, split="test") for r in test]


def plan_tasks(data: EvalSet) -> tuple[list[str], list[str]]:
    """All tasks the data's columns allow, in family order, and the reasons for the families left out."""
    tasks, skipped = [], []
    for fam in FAMILY_ORDER:
        t, s = TASK_FAMILIES.get(fam).module.plan(data)
        tasks += t
        skipped += s
    return tasks, skipped


def context_from_config(cfg: XR0Config, text: TextCache | None, examples: int = 0) -> TaskContext:
    e = cfg.eval
    return TaskContext(budget=HeadBudget(e.head_steps, e.head_lr, e.head_batch_size), seed=derive_seed(cfg.seed, "eval"),
                       knn_k=e.knn_k, landmark_radius_px=e.landmark_radius_px,
                       landmark_radius_mm=e.landmark_radius_mm, text=text, examples=examples,
                       probe_c=e.probe_c if e.probe_c == "auto" else float(e.probe_c))


def subsample(records: Sequence[Any], max_images: int, seed: int) -> list[Any]:
    """At most ``max_images`` records (0: all), chosen by a seeded hash of the path so the same records are
    kept every round; order preserved."""
    records = list(records)
    if max_images <= 0 or len(records) <= max_images:
        return records
    keep = set(sorted(range(len(records)), key=lambda i: derive_seed(seed, "eval-subset", str(records[i].path)))
               [:max_images])
    return [r for i, r in enumerate(records) if i in keep]


def run_suite(cfg: XR0Config, records: Sequence[Any], backbones: Mapping[str, Callable[[], nn.Module]], *,
              tasks: str | Sequence[str] | None = None, device: torch.device | str | None = None,
              strict: bool = True, examples: int = 0, text: TextCache | None = None,
              reader: Callable[[Any], Any] | None = None, pixels: bool = False) -> tuple[dict[str, dict], EvalResult]:
    """Evaluate several backbones on one dataset.

    Parameters
    ----------
    cfg : XR0Config
        ``model.img-size`` is the view side; ``eval.*`` the head budget and task options.
    records : SiteRecords (usable images; labels, masks, ... as the manifest gives them)
    backbones : name -> factory returning a timm ViT (built one at a time, freed after feature extraction,
        so two ViT-B never sit in memory together)
    tasks : selection (see :func:`select_tasks`); default ``eval.tasks``
    device : where the backbone runs (default ``train.device``); heads train on CPU
    strict : raise on bad annotations and task failures (``xr0 evaluate``); otherwise skip the task with
        the reason (a hospital keeps evaluating the other tasks)
    examples : qualitative examples to keep per task (local use only)
    text : a :class:`TextCache` (default: the tower of ``eval.text-encoder`` when a task needs one)
    reader : image reader (default :func:`xr0_core.data.images.read_image`)
    pixels : also score the raw-pixel baseline (output key ``"pixels"``) on the tasks it applies to

    Returns
    -------
    (per-backbone {"metrics": {task: {...}}, "examples": {task: [...]}}, EvalResult with counts / skipped)
    """
    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    records = subsample(records, cfg.eval.max_images, cfg.seed)
    data = build_eval_set(records, cfg.model.img_size, derive_seed(cfg.seed, "eval-split"), reader)
    result = EvalResult(images=len(data),
                        undecodable=[(str(getattr(r, "path", r)), why) for r, why in data.skipped])
    result.data = data
    planned, result.skipped = plan_tasks(data)
    chosen = select_tasks(cfg.eval.tasks if tasks is None else tasks, planned)

    if text is None and any(family_of(t).needs_text for t in chosen) and any(r.report or r.boxes for r in data.records):
        try:
            from xr0_core.models.text import load_text_tower

            text = TextCache(load_text_tower(cfg.eval.text_encoder, "cpu"))
        except Exception as exc:  # noqa: BLE001 -- tasks without text still run; the reason is listed
            if strict:
                raise
            result.skipped.append(f"text tasks: text encoder unavailable ({exc})")
    ctx = context_from_config(cfg, text, examples)

    prepared: dict[str, Any] = {}
    for task in chosen:
        try:
            prep = family_of(task).module.prepare(task, data, ctx)
        except EvalDataError as exc:
            if strict:
                raise
            result.skipped.append(f"{task}: invalid data: {exc}")
            continue
        if isinstance(prep, str):
            result.skipped.append(prep)
        else:
            prepared[task] = prep
    need_patches = any(family_of(t).needs_patches for t in prepared)

    outputs: dict[str, dict] = {}
    sources: dict[str, Callable[[], Any]] = {
        name: (lambda f=factory: _backbone_features(cfg, f, data, need_patches, device)) for name, factory in backbones.items()}
    if pixels:
        sources[PIXELS] = lambda: pixel_features(data)
    for name, features in sources.items():
        feats = features()
        outputs[name] = {"metrics": {}, "examples": {}}
        for task, prep in prepared.items():
            if name == PIXELS and not pixel_applicable(task):
                continue
            try:
                out = family_of(task).module.run(task, data, prep, feats, ctx)
            except Exception as exc:  # noqa: BLE001 -- one failing head must not hide the other tasks
                if strict:
                    raise
                log.warning("evaluation task %s failed for %s: %s", task, name, exc)
                result.skipped.append(f"{task}: failed for {name} backbone ({type(exc).__name__}: {exc})")
                continue
            finite = {k: v for k, v in out.metrics.items() if not math.isnan(v)}
            if not finite:
                result.skipped.append(f"{task}: no metric is defined on these test rows ({name} backbone)")
                continue
            outputs[name]["metrics"][task] = finite
            outputs[name]["examples"][task] = out.examples
            outputs[name].setdefault("per_row", {})[task] = (out.per_row, out.rows)
            result.counts[task] = out.n_test
    return outputs, result


def _backbone_features(cfg: XR0Config, factory: Callable[[], nn.Module], data: EvalSet, patches: bool,
                       device: torch.device) -> Any:
    backbone = factory().to(device)
    return extract(backbone, data, patches=patches, batch_size=cfg.eval.batch_size, device=device,
                   readout=cfg.eval.readout,
                   precision=cfg.train.precision)  # the backbone is freed on return: only features are kept


def evaluate_models(cfg: XR0Config, records: Sequence[Any], model: Callable[[], nn.Module] | None,
                    random_init: Callable[[], nn.Module], **kwargs: Any) -> EvalResult:
    """:func:`run_suite` for one backbone (``model``; ``None`` = the random-init backbone itself), the
    random-init and the raw-pixel baselines, folded into an :class:`EvalResult`."""
    backbones = {RANDOM: random_init} if model is None else {PRETRAINED: model, RANDOM: random_init}
    kwargs.setdefault("pixels", True)
    outputs, result = run_suite(cfg, records, backbones, **kwargs)
    main = outputs[PRETRAINED if model is not None else RANDOM]
    result.tasks = main["metrics"]
    result.baseline_random = outputs[RANDOM]["metrics"]
    result.baseline_pixels = outputs.get(PIXELS, {}).get("metrics", {})
    result.examples = {name: out["examples"] for name, out in outputs.items() if name != PIXELS}
    if model is not None:
        result.intervals = paired_intervals(outputs[PRETRAINED].get("per_row", {}),
                                            outputs[RANDOM].get("per_row", {}), result.data, cfg.seed)
    if PIXELS in outputs:  # the evaluated backbone (random init itself when model is None) minus raw pixels
        result.intervals_pixels = paired_intervals(main.get("per_row", {}), outputs[PIXELS].get("per_row", {}),
                                                   result.data, cfg.seed)
    return result


def evaluate_backbone(cfg: XR0Config, records: Sequence[Any], shared: Mapping[str, torch.Tensor] | None,
                      tasks: str | Sequence[str] | None = None, device: torch.device | str | None = None,
                      **kwargs: Any) -> EvalResult:
    """Evaluate the student backbone in the shared weights ``shared`` (``None``: the random-init round-0
    weights) and the random-init baseline on ``records``; see :func:`run_suite` for the options."""
    model = None if shared is None else (lambda: backbone_from_shared(cfg, shared))
    result = evaluate_models(cfg, records, model, lambda: random_init_backbone(cfg), tasks=tasks,
                             device=device, **kwargs)
    if cfg.multimodal.enabled and not probe_only(cfg.eval.tasks if tasks is None else tasks):
        # mXR-0: zero-shot retrieval and report generation with the model's own heads
        from xr0_core.eval.zeroshot import add_zeroshot

        add_zeroshot(result, cfg, records, shared, device=device, strict=kwargs.get("strict", True))
    return result
