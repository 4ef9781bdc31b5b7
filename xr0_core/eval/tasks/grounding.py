"""Visual grounding from ``boxes``: phrase + image -> box, on frozen patch tokens and a frozen text tower (D8).

Every ``{"phrase", "box"}`` of a row is one example. The head projects the phrase's sentence embedding to a
query, attends over the projected patch tokens (single-head cross-attention), and regresses the box as
``(cx, cy, w, h)`` in view units through a sigmoid from the attended feature, the query and the attention's
centre of mass (a position prior the head can correct). Loss: L1 + generalised IoU.

Metrics in the original image (IoU is invariant to the letterbox's isotropic scaling): mean IoU and
accuracy at IoU >= 0.5.

References: Rezatofighi et al., GIoU (2019); Deng et al., TransVG (2021) for phrase-to-box regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xr0_core.eval import metrics
from xr0_core.eval.tasks.base import (
    TEST,
    TRAIN,
    EvalDataError,
    EvalSet,
    Features,
    TaskContext,
    TaskOutput,
    init_head,
    seeded,
    train_head,
    where,
)

FAMILY = "grounding"
TASK = f"{FAMILY}/phrase-box"
WIDTH = 128


def plan(data: EvalSet) -> tuple[list[str], list[str]]:
    if any(r.boxes for r in data.records):
        return [TASK], []
    return [], [f"{FAMILY}: no boxes column"]


def check_box(record, k: int, box, height: int, width: int) -> None:
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise EvalDataError(f"{where(record)}: boxes: box {k} {list(box)} is outside the {width}x{height} image "
                            f"(need 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height})")


@dataclass
class Prepared:
    items: dict[str, list[tuple[int, str, np.ndarray]]]  # split -> (row, phrase, view box x0y0x1y1)


def prepare(task: str, data: EvalSet, ctx: TaskContext) -> Prepared | str:
    items: dict[str, list] = {TRAIN: [], TEST: []}
    for i, r in enumerate(data.records):
        for k, b in enumerate(r.boxes or ()):
            geo = data.geometry[i]
            check_box(r, k, b["box"], geo.height, geo.width)
            items[data.split[i]].append((i, b["phrase"], geo.box_to_view(b["box"])))
    if not items[TRAIN] or not items[TEST]:
        return f"{task}: needs rows with boxes in both train and test"
    if ctx.text is None:
        return f"{task}: no text encoder available"
    return Prepared(items)


class GroundingHead(nn.Module):
    """``(patches [B, N, D], phrase [B, T]) -> box [B, 4]`` as (cx, cy, w, h) in [0, 1] of the view."""

    def __init__(self, dim: int, text_dim: int, grid: int) -> None:
        super().__init__()
        self.q = nn.Sequential(nn.Linear(text_dim, WIDTH), nn.GELU(), nn.Linear(WIDTH, WIDTH))
        self.k = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, WIDTH))
        self.v = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, WIDTH))
        self.pos = nn.Parameter(torch.zeros(grid * grid, WIDTH))
        self.box = nn.Sequential(nn.Linear(2 * WIDTH + 2, WIDTH), nn.GELU(), nn.Linear(WIDTH, 4))
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        self.register_buffer("centres", torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5) / grid,
                             persistent=False)

    def forward(self, patches: torch.Tensor, phrase: torch.Tensor) -> torch.Tensor:
        q = self.q(phrase)  # [B, W]
        keys = self.k(patches.float()) + self.pos  # [B, N, W]
        attn = torch.einsum("bw,bnw->bn", q, keys).div(WIDTH ** 0.5).softmax(-1)
        pooled = torch.einsum("bn,bnw->bw", attn, self.v(patches.float()))
        centre = attn @ self.centres  # [B, 2]
        raw = self.box(torch.cat([pooled, q, centre], -1))
        cxcy = (torch.logit(centre.clamp(1e-4, 1 - 1e-4)) + raw[:, :2]).sigmoid()
        return torch.cat([cxcy, raw[:, 2:].sigmoid()], -1)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of paired xyxy boxes ``[B, 4]`` -> ``[B]``."""
    lt, rb = torch.max(pred[:, :2], target[:, :2]), torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda b: (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(pred) + area(target) - inter
    iou = inter / union.clamp_min(1e-9)
    hull = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0).prod(-1)
    return 1 - (iou - (hull - union) / hull.clamp_min(1e-9))


def run(task: str, data: EvalSet, prep: Prepared, feats: Features, ctx: TaskContext) -> TaskOutput:
    size = float(data.size)
    tr, te = prep.items[TRAIN], prep.items[TEST]
    phr_tr = ctx.text.embed([p for _, p, _ in tr])
    phr_te = ctx.text.embed([p for _, p, _ in te])
    box_tr = torch.as_tensor(np.stack([b for _, _, b in tr]) / size, dtype=torch.float32)
    rows_tr = [i for i, _, _ in tr]
    head = init_head(lambda: GroundingHead(feats.dim, ctx.text.dim, feats.grid), ctx.seed, task)

    def loss(idx: torch.Tensor) -> torch.Tensor:
        pred = cxcywh_to_xyxy(head(feats.patches[[rows_tr[j] for j in idx.tolist()]], phr_tr[idx]))
        return (F.l1_loss(pred, box_tr[idx], reduction="none").sum(-1) + giou_loss(pred, box_tr[idx])).mean()

    train_head(head, loss, len(tr), ctx.budget, seeded(ctx.seed, task, "batches"))
    with torch.no_grad():
        pred = torch.cat([cxcywh_to_xyxy(head(feats.patches[[i for i, _, _ in te[s:s + 64]]], phr_te[s:s + 64]))
                          for s in range(0, len(te), 64)]).numpy() * size
    ious, examples = [], []
    for (i, phrase, box_view), p in zip(te, pred):
        geo = data.geometry[i]
        p_orig, t_orig = geo.box_to_original(p), geo.box_to_original(box_view)
        ious.append(float(metrics.box_iou(p_orig[None], t_orig[None])[0]))
        if len(examples) < ctx.examples:
            examples.append({"image": data.views[i, 0].float().numpy(), "phrase": phrase, "pred": p,
                             "target": box_view, "iou": ious[-1]})
    ious_arr = np.asarray(ious)
    return TaskOutput({"mean-iou": float(ious_arr.mean()), "acc@0.5": float((ious_arr >= 0.5).mean())},
                      len(te), examples, per_row={"mean-iou": ious_arr}, rows=[i for i, _, _ in te])
