"""Landmark localisation from ``landmarks``: a heatmap head with soft-argmax on frozen patch tokens (D8).

The head predicts one heatmap per landmark index (``K`` = the most landmarks any row has); rows with fewer
landmarks (another anatomy) train and score only their first channels, so one head serves a mixed site
(the image features tell it which anatomy it sees). The coordinate of channel ``k`` is the expectation of
its spatial softmax (integral regression), trained with L1 in view pixels.

Errors are measured in the original image: mean radial error (``mre-px``) and success rate within
``eval.landmark-radius-px``; with the pixel spacing known for every test row also ``mre-mm`` and success
within ``eval.landmark-radius-mm``.

References: Sun et al., "Integral Human Pose Regression" (2018); Payer et al., SCN (2019) for MRE / SDR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xr0_core.eval import metrics
from xr0_core.eval.tasks.base import (
    TEST,
    TRAIN,
    EvalDataError,
    EvalSet,
    Features,
    PatchDecoder,
    TaskContext,
    TaskOutput,
    init_head,
    seeded,
    train_head,
    where,
)

FAMILY = "landmarks"
TASK = f"{FAMILY}/points"


def plan(data: EvalSet) -> tuple[list[str], list[str]]:
    if any(r.landmarks for r in data.records):
        return [TASK], []
    return [], [f"{FAMILY}: no landmarks column"]


def check_points(record, height: int, width: int) -> np.ndarray:
    """``[K, 2]`` (x, y) of ``record.landmarks``; a point outside the image is an :class:`EvalDataError`."""
    pts = np.asarray(record.landmarks, dtype=np.float64).reshape(-1, 2)
    for k, (x, y) in enumerate(pts):
        # Pixel centres sit at integers, so the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5].
        if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
            raise EvalDataError(
                f"{where(record)}: landmarks: landmark {k} ({x:g}, {y:g}) is outside the {width}x{height} image "
                f"(x must be in [-0.5, {width - 0.5:g}], y in [-0.5, {height - 0.5:g}])")
    return pts


@dataclass
class Prepared:
    train: list[int]
    test: list[int]
    points: dict[int, np.ndarray]  # original pixels [K_i, 2]
    k_max: int


def prepare(task: str, data: EvalSet, ctx: TaskContext) -> Prepared | str:
    points = {i: check_points(r, data.geometry[i].height, data.geometry[i].width)
              for i, r in enumerate(data.records) if r.landmarks}
    tr, te = [i for i in data.rows(TRAIN) if i in points], [i for i in data.rows(TEST) if i in points]
    if not tr or not te:
        return f"{task}: needs rows with landmarks in both train and test"
    return Prepared(tr, te, points, max(len(p) for p in points.values()))


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Heatmap logits ``[B, K, S, S]`` -> expected (x, y) ``[B, K, 2]`` in view pixels."""
    b, k, h, w = logits.shape
    prob = logits.flatten(2).softmax(-1).reshape(b, k, h, w)
    xs = torch.arange(w, dtype=prob.dtype)
    ys = torch.arange(h, dtype=prob.dtype)
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


def run(task: str, data: EvalSet, prep: Prepared, feats: Features, ctx: TaskContext) -> TaskOutput:
    tr, te, k_max, size = prep.train, prep.test, prep.k_max, data.size

    def targets(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        xy = torch.zeros(len(rows), k_max, 2)
        present = torch.zeros(len(rows), k_max, dtype=torch.bool)
        for n, i in enumerate(rows):
            pts = prep.points[i]
            xy[n, :len(pts)] = torch.as_tensor(data.geometry[i].to_view(pts), dtype=torch.float32)
            present[n, :len(pts)] = True
        return xy, present

    head = init_head(lambda: PatchDecoder(feats.dim, k_max, feats.grid, size), ctx.seed, task)
    xy_tr, m_tr = targets(tr)
    p_tr = feats.patches[tr]

    def loss(idx: torch.Tensor) -> torch.Tensor:
        err = (soft_argmax(head(p_tr[idx])) - xy_tr[idx]).abs().sum(-1) / size  # [b, K], in view widths
        m = m_tr[idx].float()
        return (err * m).sum() / m.sum().clamp_min(1.0)

    train_head(head, loss, len(tr), ctx.budget, seeded(ctx.seed, task, "batches"))
    errs_px, errs_mm, examples = [], [], []
    with torch.no_grad():
        pred_view = torch.cat([soft_argmax(head(feats.patches[te[s:s + 32]])) for s in range(0, len(te), 32)])
    for n, i in enumerate(te):
        geo, truth = data.geometry[i], prep.points[i]
        pred = geo.to_original(pred_view[n, :len(truth)].numpy())
        errs_px.append(metrics.radial_errors(pred, truth))
        if geo.spacing_mm is not None:
            errs_mm.append(metrics.radial_errors(pred, truth, np.tile(geo.spacing_mm, (len(truth), 1))))
        if len(examples) < ctx.examples:
            examples.append({"image": data.views[i, 0].float().numpy(), "pred": pred_view[n, :len(truth)].numpy(),
                             "target": geo.to_view(truth), "error_px": float(errs_px[-1].mean())})
    px = np.concatenate(errs_px)
    out = {"mre-px": float(px.mean()),
           f"success@{ctx.landmark_radius_px:g}px": metrics.success_rate(px, ctx.landmark_radius_px)}
    if len(errs_mm) == len(te):  # mm only when every test row knows its spacing: no mixed units
        mm = np.concatenate(errs_mm)
        out["mre-mm"] = float(mm.mean())
        out[f"success@{ctx.landmark_radius_mm:g}mm"] = metrics.success_rate(mm, ctx.landmark_radius_mm)
    # Per image: its mean radial error (the pooled mre-px weighs points; equal when images have equal counts).
    per_image = np.asarray([e.mean() for e in errs_px])
    return TaskOutput(out, len(te), examples, per_row={"mre-px": per_image}, rows=list(te))
