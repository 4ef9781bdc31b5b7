"""Membership scores of a released backbone, one per image, then one per patient (the DP unit).

What an attacker holding the released weights (or querying the backbone's features: black box) and a
candidate patient's radiographs can compute:

- ``ssl-loss`` (white box, needs the DINO head of the shared weights): minus the DINO term of the SSL loss of
  the image's views with the released student as its own teacher (:func:`dino_loss_scores`): training lowered
  exactly this on the training images.
- ``ssl-consistency`` (augmentation consistency): the mean cosine between the features of ``views`` augmented
  views of an image and of its centre view. The SSL objective pulls the views of each *training* image
  together, so a model that memorised a patient gives its images more consistent features.
- ``nn-margin`` (nearest-neighbour re-identification): the cosine between one augmented view and the image's
  own centre view, minus its cosine to the nearest image of any *other* patient of the audited set. A
  positive margin re-identifies the image from a perturbed copy (another acquisition); memorised patients
  are re-identified by a wider margin.
- ``image-report`` (mXR-0 only, white box: the released image and text projections; the site's reports):
  image-to-report re-linkage, the cosine of the image's projection to its *own* report's minus its cosine
  to the closest report of any *other* audited patient. The contrastive term pulled exactly the training
  pairs together, so a model that memorised a patient links its image to its report by a wider margin.
  Images without a report do not count; a patient without any is not scored (the score is then left out).

Views are seeded by (seed, image key), never by position, so a target model and its reference models score
the same views. Features are centred by the mean centre-view feature of the audited set before the cosine
(the raw ViT's common component would otherwise dominate it).

References: Yeom et al. (2018) for loss-style scores; Packhaeuser et al. (2022, Sci Rep) for patient
re-identification from chest radiographs; for the re-linkage of images and reports, the membership attacks
on contrastive vision-language models (Ko et al., "Practical membership inference attacks against large-scale
multi-modal models", ICCV 2023).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.config import XR0Config
from xr0_core.data.dataset import image_key
from xr0_core.data.views import MultiCropViews, center_view
from xr0_core.models.features import frozen_features
from xr0_core.runtime import torch_generator

log = logging.getLogger(__name__)

SSL_LOSS = "ssl-loss"
CONSISTENCY = "ssl-consistency"
NN_MARGIN = "nn-margin"
IMAGE_REPORT = "image-report"
SCORES = (CONSISTENCY, NN_MARGIN)


@dataclass(frozen=True)
class ImageFeatures:
    """Centre-view and augmented-view features of every audited image (unit L2 norm after centring).

    Shapes: ``center [N, D]``, ``views [N, V, D]``; ``raw [N, 1 + V, D]``: the CLS tokens as the backbone gave
    them (centre view first), which the DINO head reads.
    """

    center: torch.Tensor
    views: torch.Tensor
    raw: torch.Tensor | None = None


def _views_maker(cfg: XR0Config) -> MultiCropViews:
    # global crops only: local crops are not what the released backbone is evaluated on
    return MultiCropViews(dataclasses.replace(cfg, ssl=dataclasses.replace(cfg.ssl, n_local_crops=0)))


def image_views(cfg: XR0Config, image: torch.Tensor, key: str, n_views: int, seed: int) -> torch.Tensor:
    """The centre view and ``n_views`` augmented global views of one image, seeded by (seed, key).

    Shapes: ``image [1, H, W]`` -> ``[1 + n_views, 1, S, S]``.
    """
    maker, g = _views_maker(cfg), torch_generator(seed, "audit-views", key)
    views = [center_view(image, cfg.model.img_size)[None]]
    while sum(v.shape[0] for v in views) < 1 + n_views:
        views.append(maker(image, g)["global"])
    return torch.cat(views)[: 1 + n_views]


@torch.no_grad()
def extract_image_features(cfg: XR0Config, backbone: nn.Module, images: Any, keys: Sequence[str], *,
                           n_views: int = 4, seed: int = 0, batch_size: int = 64,
                           device: torch.device | str = "cpu") -> ImageFeatures:
    """CLS features of the centre view and ``n_views`` augmented views of every image of ``images``.

    Parameters
    ----------
    images : image source (``len``, ``images[i] -> [1, L, L]``; an ImageCache or prepared shards)
    keys : the stable key of each image (:func:`xr0_core.data.dataset.image_key`), which seeds its views
    """
    n, per = len(images), 1 + n_views
    if len(keys) != n:
        raise ValueError(f"{len(keys)} image keys for {n} images")
    block = max(1, batch_size // per)
    made: dict[int, torch.Tensor] = {}

    def batch(a: int, b: int) -> torch.Tensor:
        # a..b index image-major virtual rows (image i, view j) = i * per + j
        rows = []
        for r in range(a, b):
            i = r // per
            if i not in made:
                made.clear()
                made.update({k: image_views(cfg, images[k], keys[k], n_views, seed)
                             for k in range(i, min(n, i + block))})
            rows.append(made[i][r % per])
        return torch.stack(rows)

    cls, _ = frozen_features(backbone, n * per, batch, batch_size=block * per, device=device,
                             precision=cfg.train.precision)
    raw = cls.view(n, per, -1)
    mean = raw[:, 0].mean(0)
    cls = F.normalize(raw - mean, dim=-1)
    return ImageFeatures(center=cls[:, 0].contiguous(), views=cls[:, 1:].contiguous(), raw=raw)


@torch.no_grad()
def dino_loss_scores(feats: ImageFeatures, head: nn.Module, *, teacher_temp: float, student_temp: float
                     ) -> np.ndarray:
    """Minus the DINO term of the SSL loss per image, the released student as its own teacher.

    Every view's head output is a teacher target (centred by the mean output over the audited images, DINO's
    centering; sharpened at ``teacher_temp``) for every *other* view's student prediction (``student_temp``):
    ``-mean_{a != b} CE(softmax((z_a - c) / t_t), softmax(z_b / t_s))``. Shapes: ``raw [N, 1 + V, D] -> [N]``.

    References: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (ICCV 2021).
    """
    if feats.raw is None:
        raise ValueError("dino_loss_scores needs the raw CLS tokens")
    from xr0_core.ssl.losses.dino import DINOLoss  # the one DINO cross-entropy (ssl/losses), not a copy

    z = head(feats.raw.flatten(0, 1)).view(*feats.raw.shape[:2], -1).float()  # [N, P, K]
    center = z.mean((0, 1), keepdim=True)
    t = torch.softmax((z - center) / teacher_temp, dim=-1)  # every view a teacher target: G = V = P
    loss = DINOLoss(z.shape[-1], student_temp=student_temp)(z, t)  # [N], mean over the pairs a != b
    return (-loss).cpu().numpy().astype(float)


def image_scores(feats: ImageFeatures, patients: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-image ``ssl-consistency`` and ``nn-margin`` (see the module docstring). Shapes: ``[N]`` each."""
    pats = np.asarray([str(p) for p in patients])
    consistency = (feats.views * feats.center[:, None]).sum(-1).mean(1)
    query = feats.views[:, 0]  # [N, D]
    margin = margin_to_others(query @ feats.center.T, pats)  # query i against every image's centre view
    return {CONSISTENCY: consistency.numpy().astype(float), NN_MARGIN: margin.numpy().astype(float)}


def margin_to_others(sim: torch.Tensor, patients: Sequence[str]) -> torch.Tensor:
    """Row i's similarity to its own column i minus its largest similarity to a column of another patient
    (-1 when there is none). Shapes: ``sim [N, N] -> [N]``."""
    pats = np.asarray([str(p) for p in patients])
    own = sim.diagonal().clone()
    _, codes = np.unique(pats, return_inverse=True)
    codes_t = torch.as_tensor(codes)
    same = codes_t[:, None] == codes_t[None, :]
    other = sim.masked_fill(same, -float("inf")).max(1).values
    return own - torch.where(torch.isfinite(other), other, torch.full_like(other, -1.0))


@torch.no_grad()
def image_report_scores(model: nn.Module, feats: ImageFeatures, reports: Sequence[str | None],
                        patients: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """Image-to-report re-linkage margin per image (see the module docstring); NaN where an image has no report.

    Parameters
    ----------
    model : MultimodalXR0 with its contrastive projections (``encode_image``, ``encode_text``, ``tokenizer``)
    feats : the audited images' features; ``raw[:, 0]`` (centre-view CLS) is what the image projection reads
    reports : one report per image (None or empty: no report)

    Shapes: ``[N]``.
    """
    from xr0_core.data.reports import prepare_report

    if feats.raw is None:
        raise ValueError("image_report_scores needs the raw CLS tokens")
    texts = [prepare_report(r) for r in reports]
    rows = [i for i, t in enumerate(texts) if t]
    out = np.full(len(texts), np.nan)
    if not rows:
        return out
    chosen = [texts[i] for i in rows]
    enc = model.tokenizer(chosen, padding=True, truncation=True, max_length=model.max_tokens, return_tensors="pt")
    zt = torch.cat([model.encode_text(enc["input_ids"][a:a + batch_size],
                                      enc["attention_mask"][a:a + batch_size].bool()).float()
                    for a in range(0, len(chosen), batch_size)])
    zi = model.encode_image(feats.raw[rows, 0]).float()
    sim = F.normalize(zi, dim=-1) @ F.normalize(zt, dim=-1).T  # [R, R]: image i against every report
    out[rows] = margin_to_others(sim, [patients[i] for i in rows]).numpy()
    return out


def per_patient(values: np.ndarray, patients: Sequence[str], order: Sequence[str]) -> np.ndarray:
    """Mean of each patient's image values, in the order of ``order``. Shapes: ``[N] -> [len(order)]``."""
    pats = np.asarray([str(p) for p in patients])
    out = np.empty(len(order))
    for k, p in enumerate(order):
        sel = pats == p
        if not sel.any():
            raise ValueError(f"patient {p!r} has no audited image")
        out[k] = float(np.mean(values[sel]))
    return out


def patient_scores(cfg: XR0Config, backbone: nn.Module, images: Any, patients: Sequence[str],
                   order: Sequence[str], *, n_views: int = 4, seed: int = 0, head: nn.Module | None = None,
                   text_model: nn.Module | None = None, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Every score of :data:`SCORES` per patient of ``order`` (``images[i]`` belongs to ``patients[i]``),
    :data:`SSL_LOSS` when the DINO ``head`` is given (white box: the shared weights, not an exported backbone),
    and :data:`IMAGE_REPORT` when an mXR-0 ``text_model`` is given and every patient of ``order`` has an image
    with a report (``images.kept[i].report``)."""
    keys = [image_key(r) for r in images.kept]
    feats = extract_image_features(cfg, backbone, images, keys, n_views=n_views, seed=seed, device=device)
    per_image = image_scores(feats, patients)
    if head is not None:
        per_image = {SSL_LOSS: dino_loss_scores(feats, head.eval(), teacher_temp=cfg.ssl.teacher_temp,
                                                student_temp=cfg.ssl.student_temp), **per_image}
    out = {name: per_patient(v, patients, order) for name, v in per_image.items()}
    if text_model is not None:
        linked = image_report_scores(text_model.eval(), feats, [getattr(r, "report", None) for r in images.kept],
                                     patients, batch_size=cfg.eval.batch_size)
        has = np.isfinite(linked)
        scored = {str(p) for p, h in zip(patients, has) if h}
        missing = [p for p in order if str(p) not in scored]
        if missing:
            log.info("audit: image-report score left out: %d of %d patients have no image with a report",
                     len(missing), len(order))
        else:
            out[IMAGE_REPORT] = per_patient(linked[has], [p for p, h in zip(patients, has) if h], order)
    return out
