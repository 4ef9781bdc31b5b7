"""The privacy audit of one released model at one hospital: who is a member, the scores, their calibration, the
statistics, the one-run canary bound, and what may leave (:meth:`AuditResult.flat_metrics`).

Members are the site's training patients, non-members the patients it never trained on: held out by the
manifest's ``split = test`` (or, at a site with DP releases, by its private hold-out,
:func:`xr0_core.data.splits.private_partition`) and the canaries whose secret coin was False
(:mod:`.canaries`). Every statistic is per patient, the unit of the site's DP guarantee.

The audit answers "what does the released model tell an attacker about who was in this site's training
data", for an attacker who has the weights (white box: the SSL loss needs the heads, which leave the site
every round) or only the backbone's features (black box: consistency and re-identification), and holds the
candidate patient's images. It gives a *lower* bound on epsilon, valid at 95 % whatever the model: with several
scores each bound is taken at 0.05 / (number of scores) (Bonferroni), so the largest of them is still a 95 %
bound. The ledger's epsilon is an *upper* bound; the gap is expected (docs/privacy.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from xr0_core.audit import stats
from xr0_core.audit.calibrate import offline_lira
from xr0_core.audit.canaries import CanarySet
from xr0_core.audit.one_run import audit_canaries
from xr0_core.audit.scores import CONSISTENCY, NN_MARGIN, SSL_LOSS, patient_scores
from xr0_core.config import XR0Config
from xr0_core.data.splits import unit_of
from xr0_core.runtime import derive_seed, numpy_rng

log = logging.getLogger(__name__)

AUDIT_FORMAT = "xr0-audit/1"
CANARY_SCORE_ORDER = (SSL_LOSS, CONSISTENCY, NN_MARGIN)  # the canary audit's score: the first available


class AuditError(ValueError):
    """The audit cannot run on this data or model; the message says what is missing."""


@dataclass(frozen=True)
class Membership:
    """Audited patients (``units``, in order), whether each was trained on, and which are canaries."""

    units: tuple[str, ...]
    members: np.ndarray  # [P] bool
    canary: np.ndarray  # [P] bool

    @property
    def n_members(self) -> int:
        return int(self.members.sum())

    @property
    def n_nonmembers(self) -> int:
        return int((~self.members).sum())


def site_membership(train_records: Sequence[Any], held_records: Sequence[Any],
                    canaries: CanarySet | None = None) -> Membership:
    """Members: patients of ``train_records`` (the side the site trains on, *before* its left-out canaries are
    removed) minus the left-out canaries; non-members: patients of ``held_records`` and the left-out canaries. A patient on both sides is an error (the split is per patient)."""
    train_units = {unit_of(r) for r in train_records}
    held_units = {unit_of(r) for r in held_records}
    both = train_units & held_units
    if both:
        raise AuditError(f"{len(both)} patient(s) have images on both sides of the split (e.g. {sorted(both)[0]!r}): "
                         "membership is per patient; fix the manifest's split column")
    coins = canaries.coin() if canaries is not None else {}
    units = sorted(train_units | held_units)
    members = np.array([u in train_units and coins.get(u, True) for u in units], dtype=bool)
    canary = np.array([u in coins for u in units], dtype=bool)
    return Membership(tuple(units), members, canary)


@dataclass
class ScoreStats:
    """Statistics of one membership score over the audited patients."""

    auroc: float
    auroc_ci: tuple[float, float]
    points: list[stats.OperatingPoint]
    epsilon_lower: float  # at confidence 1 - alpha / n_scores (Bonferroni), delta of the site
    epsilon_point: float
    roc: tuple[list[float], list[float]]  # (fpr, tpr): local only

    def to_json(self) -> dict:
        return {"auroc": self.auroc, "auroc_ci95": list(self.auroc_ci),
                "operating_points": [{"target_fpr": p.target, "tpr": p.tpr, "tpr_ci95": list(p.tpr_ci),
                                      "fpr": p.fpr, "fpr_ci95": list(p.fpr_ci)} for p in self.points],
                "epsilon_lower": self.epsilon_lower, "epsilon_point": self.epsilon_point}


@dataclass
class AuditResult:
    """Everything the audit found (``audit.json``); :meth:`flat_metrics` is the part that may leave."""

    delta: float
    membership: Membership
    scores: dict[str, ScoreStats]
    calibration: str
    epsilon_ledger: float | None = None
    canaries: dict | None = None
    model: str = ""
    seconds: float = 0.0
    images: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def epsilon_lower(self) -> float:
        """The largest membership bound over the scores (each taken at the Bonferroni level: a 95 % bound)."""
        return max([s.epsilon_lower for s in self.scores.values()] + [0.0])

    def to_json(self) -> dict:
        return {"format": AUDIT_FORMAT, "model": self.model, "unit": "patient", "delta": self.delta,
                "members": self.membership.n_members, "non_members": self.membership.n_nonmembers,
                "images": self.images, "calibration": self.calibration, "epsilon_ledger": self.epsilon_ledger,
                "epsilon_lower": self.epsilon_lower, "confidence": 0.95,
                "scores": {k: v.to_json() for k, v in self.scores.items()},
                "canaries": self.canaries, "seconds": self.seconds,
                "roc": {k: {"fpr": v.roc[0], "tpr": v.roc[1]} for k, v in self.scores.items()}, **self.extra}

    def flat_metrics(self) -> dict[str, float]:
        """The scalars an evaluation reply may carry: ``audit/<score>/auroc`` (``-low`` / ``-high``: its 95 %
        interval), ``audit/<score>/tpr-at-fpr-<f>`` (and interval), ``audit/<score>/epsilon-lower``,
        ``audit/epsilon-lower`` and, with canaries, ``audit/canary/epsilon-lower``. No count, no per-patient
        value, no curve: the ROC stays in the local ``audit.json``."""
        out: dict[str, float] = {}
        for name, s in self.scores.items():
            p = f"audit/{name}/"
            out[p + "auroc"], (out[p + "auroc-low"], out[p + "auroc-high"]) = s.auroc, s.auroc_ci
            for op in s.points:
                key = f"{p}tpr-at-fpr-{op.target:g}"
                out[key], out[key + "-low"], out[key + "-high"] = op.tpr, op.tpr_ci[0], op.tpr_ci[1]
            out[p + "epsilon-lower"] = s.epsilon_lower
        out["audit/epsilon-lower"] = self.epsilon_lower
        if self.canaries is not None:
            out["audit/canary/epsilon-lower"] = float(self.canaries["epsilon_lower"])
        return {k: float(v) for k, v in out.items()}


def score_stats(scores: np.ndarray, members: np.ndarray, delta: float, *, alpha: float, seed: int) -> ScoreStats:
    """AUROC with its interval, the operating points of :data:`~xr0_core.audit.stats.FPR_LEVELS`, the split
    epsilon bound at level ``alpha`` and the ROC."""
    low, high = stats.auroc_interval(scores, members, seed=seed)
    split = stats.split_epsilon_lower_bound(scores, members, delta, alpha=alpha, seed=seed)
    fpr, tpr, _ = stats.roc_curve(scores, members)
    return ScoreStats(stats.auroc(scores, members), (low, high),
                      [stats.tpr_at_fpr(scores, members, f) for f in stats.FPR_LEVELS],
                      split["epsilon_lower"], split["epsilon_point"], ([float(x) for x in fpr], [float(x) for x in tpr]))


ModelScores = Callable[[Any, Sequence[str], Sequence[str]], dict[str, np.ndarray]]


def model_scorer(cfg: XR0Config, backbone_factory: Callable[[], torch.nn.Module],
                 shared: Mapping[str, torch.Tensor] | None, *, n_views: int = 4, seed: int = 0) -> ModelScores:
    """``scorer(images, patients, order) -> {score: [P]}`` for one model (the SSL loss only with ``shared``; the
    image-report re-linkage with the ``shared`` weights of an mXR-0 model with a contrastive term)."""
    def scorer(images: Any, patients: Sequence[str], order: Sequence[str]) -> dict[str, np.ndarray]:
        head = text_model = None
        if shared is not None:
            from xr0_core.ssl.factory import build_model

            model = build_model(cfg)
            model.load_shared_state_dict({k: torch.as_tensor(v) for k, v in shared.items()}, strict=True)
            head = model.student["dino_head"]
            if getattr(model, "contrastive_loss", None) is not None:
                text_model = model
        return patient_scores(cfg, backbone_factory(), images, patients, order, n_views=n_views, seed=seed,
                              head=head, text_model=text_model)
    return scorer


def train_reference(cfg: XR0Config, images: Any, steps: int, *, site: str) -> dict[str, torch.Tensor]:
    """One reference model: the round-0 initialisation trained ``steps`` plain SSL steps on ``images`` with the
    run's recipe (``cfg``); its shared weights."""
    from xr0_core.train.trainer import SiteTrainer

    trainer = SiteTrainer(cfg, [], site=site, cache=images)
    trainer.train(steps, start_step=0, total_steps=steps)
    return trainer.shared_state_dict()


def subset_images(images: Any, rows: Sequence[int]) -> Any:
    """An in-memory image source over ``rows`` of ``images`` (reference training sets)."""
    from xr0_core.data.dataset import ImageCache

    sub = ImageCache([], images.load_size if hasattr(images, "load_size") else images[0].shape[-1])
    sub._images = torch.stack([images[i] for i in rows]).to(torch.float16)  # noqa: SLF001 -- same module family
    sub.kept = [images.kept[i] for i in rows]
    return sub


def run_audit(cfg: XR0Config, images: Any, membership: Membership, scorer: ModelScores, delta: float, *,
              references: int = 0, reference_steps: int = 0, alpha: float = 0.05, seed: int = 0,
              canary_guess_fraction: float = 1.0, epsilon_ledger: float | None = None,
              reference_scorer: Callable[[Mapping[str, torch.Tensor]], ModelScores] | None = None,
              baseline: ModelScores | None = None, model: str = "") -> AuditResult:
    """Score the audited model, calibrate against ``references`` reference models, and compute every statistic.

    Parameters
    ----------
    images : image source over the audited patients' images (``kept`` records carry ``patient_id``)
    membership : who is a member (:func:`site_membership`)
    scorer : the audited model's scores (:func:`model_scorer`)
    references, reference_steps : reference models for offline LiRA (0: raw scores). Reference ``j`` trains
        ``reference_steps`` steps on a seeded random half of the non-canary patients; a patient's calibration
        uses only the references that did not train on it (canaries: all).
    reference_scorer : ``reference_scorer(shared) -> scorer`` of a reference model (default: like ``scorer``'s
        model, built with :func:`model_scorer` from the shared weights)
    baseline : the scorer of the weights training *started* from (the round-0 initialisation, or the global
        weights a round received), used when there are no references: each score minus the patient's score
        under the starting weights ("difficulty calibration" against a model that trained on nobody of this
        site; Watson et al., ICLR 2022). A model that has not trained on a patient moved its score only by
        what it learned from others.
    """
    import time

    t0 = time.perf_counter()
    patients = [unit_of(r) for r in images.kept]
    order = list(membership.units)
    if membership.n_members == 0 or membership.n_nonmembers == 0:
        raise AuditError(f"the audit needs members and non-members: {membership.n_members} training patients and "
                         f"{membership.n_nonmembers} held-out patients among the images given (hold out patients "
                         "with split = test, or set privacy.audit-canaries)")
    raw = scorer(images, patients, order)
    calibration = "none (raw scores)"
    final = dict(raw)
    if references > 0:
        if reference_steps < 1:
            raise AuditError("reference models need --reference-steps >= 1")
        rng = numpy_rng(seed, "audit-references")
        pool = [u for u, c in zip(order, membership.canary) if not c]
        ref_scores: dict[str, list[np.ndarray]] = {k: [] for k in raw}
        outs = []
        for j in range(references):
            chosen = set(rng.permutation(pool)[: max(1, len(pool) // 2)].tolist())
            rows = [i for i, p in enumerate(patients) if p in chosen]
            log.info("audit: reference model %d/%d on %d patients (%d images)", j + 1, references, len(chosen),
                     len(rows))
            shared = train_reference(cfg, subset_images(images, rows), reference_steps, site=f"audit-ref-{j}")
            ref = (reference_scorer or (lambda sh: model_scorer(cfg, _factory(cfg, sh), sh, seed=seed)))(shared)
            values = ref(images, patients, order)
            for k in raw:
                ref_scores[k].append(values[k])
            outs.append([u not in chosen for u in order])
        out_mask = np.array(outs, dtype=bool)
        final = {k: offline_lira(raw[k], np.array(ref_scores[k]), out_mask) for k in raw}
        calibration = f"offline LiRA, {references} reference model(s) of {reference_steps} steps"
    elif baseline is not None:
        start = baseline(images, patients, order)
        final = {k: raw[k] - start[k] for k in raw}
        calibration = "difference to the starting weights"
    n_scores = len(final)
    result = AuditResult(delta=float(delta), membership=membership, calibration=calibration,
                         scores={k: score_stats(v, membership.members, delta, alpha=alpha / n_scores,
                                                seed=derive_seed(seed, "stats", k) % (2 ** 32))
                                 for k, v in final.items()},
                         epsilon_ledger=epsilon_ledger, model=model, images=len(images))
    if membership.canary.any():
        name = next(k for k in CANARY_SCORE_ORDER if k in final)
        sel = membership.canary
        audit = audit_canaries(final[name][sel], membership.members[sel], delta, alpha=alpha,
                               guess_fraction=canary_guess_fraction)
        result.canaries = {"score": name, **audit.to_json()}
    result.seconds = time.perf_counter() - t0
    return result


def _factory(cfg: XR0Config, shared: Mapping[str, torch.Tensor]) -> Callable[[], torch.nn.Module]:
    from xr0_core.eval.baseline import backbone_from_shared

    return lambda: backbone_from_shared(cfg, shared)
