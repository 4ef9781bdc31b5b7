"""SSL health: is the backbone learning, or collapsing? Measured on a fixed probe batch during training.

A falling SSL loss does not say the features are useful: DINO-style objectives can collapse (every image to
one point, or to a handful of prototypes) while their loss looks fine. These are the standard cheap checks,
all computed without gradient on the same fixed probe images every time (so values are comparable across
steps and rounds):

- ``rankme-cls`` / ``rankme-patch``: RankMe (effective rank) of the centred CLS features and of the mean
  patch features ``[N, D]``: ``exp(entropy(singular values / their sum))``; 1 = every image maps to one
  point or one line;
- ``feature-std``: mean per-dimension standard deviation of the L2-normalised CLS features across the probe
  images (DINO's collapse check; ~0 = constant output);
- ``teacher-entropy`` / ``student-entropy``: mean per-image entropy (nats) of the teacher's centred,
  sharpened prototype distribution and of the student's; ``log K`` = uniform (no information), ~0 = one-hot;
- ``prototype-usage``: how many of the K prototypes are the teacher's top choice for at least one probe image;
- ``center-norm``: L2 norm of the DINO center (0 under Sinkhorn centering);
- ``knn-probe``: leave-one-out k-NN accuracy of a label on the probe images, when the site has one.

:func:`~xr0_core.train.health_verdict.assess` (torch-free, so readers of ``metrics.json`` need no torch) turns a
sequence of such measurements into a verdict: ``collapsed``, ``not learning`` or ``ok``, with the reasons, so a
run can say so in its output; this module re-exports it.

References:
    Garrido et al., "RankMe: Assessing the Downstream Performance of Pretrained Self-Supervised
    Representations by Their Rank" (ICML 2023); Caron et al., DINO (2021), section 5.3 (collapse:
    entropy and KL of the teacher output).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.train.health_verdict import PREFIX


def rankme(features: torch.Tensor, eps: float = 1e-7, center: bool = True) -> float:
    """Effective rank of ``features [N, D]``: ``exp(-sum p log p)``, ``p = s / sum(s)`` over singular values.

    With ``center`` (default) the mean feature is removed first: ViT features share a large common
    component that would otherwise dominate the spectrum and hide how the images differ. 1 for features
    that all lie on one line (or are all equal); at most ``min(N, D)``.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"rankme expects features [N, D] with N > 0, got {tuple(features.shape)}")
    x = features.double()
    if center:
        x = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.sum()) <= eps:
        return 1.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def feature_std(features: torch.Tensor) -> float:
    """Mean per-dimension std across rows of the L2-normalised ``features [N, D]`` (0 = constant output)."""
    if features.shape[0] < 2:
        return float("nan")
    return float(F.normalize(features.float(), dim=-1).std(dim=0).mean())


def mean_entropy(probs: torch.Tensor) -> float:
    """Mean entropy (nats) of the rows of ``probs [N, K]``."""
    return float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())


def knn_probe(features: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """Leave-one-out accuracy of the project's weighted k-NN (:func:`xr0_core.models.knn.knn_predict`) on
    ``labels [N]`` (long, -1 = unknown) from ``features [N, D]``."""
    from xr0_core.models.knn import knn_predict

    keep = labels >= 0
    x, y = F.normalize(features[keep].float(), dim=-1), labels[keep].long()
    if len(y) < 3 or len(torch.unique(y)) < 2:
        return float("nan")
    votes = knn_predict(x, y, x, k=k, leave_one_out=True)
    return float((votes.argmax(1) == y).float().mean())


def _features(backbone: nn.Module, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS ``[P, D]`` and mean patch token ``[P, D]`` of the probe views ``[P, 1, S, S]`` in [0, 1]
    (:func:`xr0_core.models.features.frozen_features`, full precision: values comparable across devices)."""
    from xr0_core.data.transforms import normalize
    from xr0_core.models.features import frozen_features

    cls, patch = frozen_features(backbone, len(views), lambda a, b: normalize(views[a:b].float()),
                                 precision="fp32", patches=lambda t: t.float().mean(1))
    return cls, patch


@torch.no_grad()
def probe_health(backbone: nn.Module, views: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Backbone-only health on the probe images.

    Parameters
    ----------
    backbone : timm ViT (``forward_features -> [B, 1 + N, D]``)
    views : Tensor [P, 1, S, S], float in [0, 1] (un-normalised evaluation views)
    labels : long Tensor [P], optional (-1 = unknown): adds ``knn-probe``

    Returns
    -------
    dict: ``rankme-cls``, ``rankme-patch``, ``feature-std`` (and ``knn-probe``).
    """
    cls, patch = _features(backbone, views)
    out = {"rankme-cls": rankme(cls), "rankme-patch": rankme(patch), "feature-std": feature_std(cls)}
    if labels is not None:
        out["knn-probe"] = knn_probe(cls, labels)
    return out


@torch.no_grad()
def ssl_health(model: Any, views: torch.Tensor, teacher_temp: float,
               labels: torch.Tensor | None = None) -> dict[str, float]:
    """:func:`probe_health` of the student backbone plus the prototype-level checks of an
    :class:`~xr0_core.ssl.method.XR0SSL` (teacher / student entropy, prototype usage, center norm).

    ``views [P, 1, S, S]`` in [0, 1]; ``teacher_temp`` of the current step. Keys are bare (no prefix).
    """
    out = probe_health(model.student["backbone"], views, labels)
    t_cls, _ = _features(model.teacher["backbone"], views)
    s_cls, _ = _features(model.student["backbone"], views)
    dev = next(model.teacher.parameters()).device
    center = model.dino_loss.centering.center.float().cpu()
    t_logits = model.teacher["dino_head"](t_cls.to(dev)).float().cpu()
    head = model.student["dino_head"]
    was_training = head.training
    head.eval()
    try:
        s_logits = head(s_cls.to(dev)).float().cpu()
    finally:
        head.train(was_training)
    t_probs = torch.softmax((t_logits - center) / teacher_temp, dim=-1)
    s_probs = torch.softmax(s_logits / model.dino_loss.student_temp, dim=-1)
    out.update({
        "teacher-entropy": mean_entropy(t_probs),
        "student-entropy": mean_entropy(s_probs),
        "prototype-usage": float(len(torch.unique(t_probs.argmax(-1)))),
        "prototypes": float(t_probs.shape[-1]),
        "center-norm": float(center.norm()),
    })
    return out


class HealthMonitor:
    """Fixed probe batch + the features of the first measurement, for :func:`ssl_health` during training.

    Parameters
    ----------
    views : Tensor [P, 1, S, S] in [0, 1]
        The probe images (the trainer takes the first P cached training images, resized: fixed across steps).
    labels : long Tensor [P], optional
        A label for ``knn-probe`` (-1 = unknown).
    reference : nn.Module, optional
        The initial (round-0) backbone: ``feature-change`` is measured against its probe features, so the
        value depends on the weights only (the same after a resume or in a new round's trainer).
    """

    def __init__(self, views: torch.Tensor, labels: torch.Tensor | None = None,
                 reference: nn.Module | None = None) -> None:
        if views.ndim != 4 or views.shape[0] < 2:
            raise ValueError(f"health probe needs views [P >= 2, 1, S, S], got {tuple(views.shape)}")
        self.views = views
        self.labels = labels
        self._first = None if reference is None else _features(reference, views)[0]

    def measure(self, model: Any, teacher_temp: float) -> dict[str, float]:
        """``health/<key>`` scalars of the model now, with ``feature-change`` (relative L2 change of the probe
        CLS features from the reference backbone's, else from this monitor's first measurement)."""
        out = ssl_health(model, self.views, teacher_temp, self.labels)
        cls = _features(model.student["backbone"], self.views)[0]
        if self._first is None:
            self._first = cls
        out["feature-change"] = float((cls - self._first).norm() / self._first.norm().clamp_min(1e-12))
        return {PREFIX + k: v for k, v in out.items()}


PROBE_IMAGES = 64


def build_monitor(cache: Any, img_size: int, n: int = PROBE_IMAGES,
                  reference: nn.Module | None = None) -> HealthMonitor:
    """A :class:`HealthMonitor` on the first ``n`` images of an :class:`~xr0_core.data.dataset.ImageCache`
    (resized whole to ``img_size``, as the evaluation view), with anatomy labels for ``knn-probe`` when the
    probe images hold at least two anatomies.

    Shapes: probe views ``[min(n, len(cache)), 1, img_size, img_size]``.
    """
    from xr0_core.data.transforms import resize

    count = min(n, len(cache))
    views = torch.stack([resize(cache[i].float(), img_size).clamp(0.0, 1.0) for i in range(count)])
    anatomies = [getattr(r, "anatomy", None) for r in cache.kept[:count]]
    names = sorted({a for a in anatomies if a})
    labels = None
    if len(names) >= 2:
        labels = torch.tensor([names.index(a) if a else -1 for a in anatomies], dtype=torch.long)
    return HealthMonitor(views, labels, reference)
