"""Retrieval on frozen features: image-to-image by label, image-to-report and report-to-image (D8).

- ``retrieval/image-image/<source>`` (``<source>`` = ``anatomy`` or ``label_<name>``): each test image queries
  the train images by cosine similarity of CLS features; a hit is a gallery image with the same value.
  No head is trained.
- ``retrieval/image-report`` and ``retrieval/report-image``: linear projections of the image CLS and of the
  frozen text tower's sentence embedding into a shared 128-d space, trained with symmetric InfoNCE on the
  train rows; test images rank test reports and vice versa. A hit is a report whose normalised text equals
  the query's own (templated reports repeat, so an identical report counts as the right one).

Metrics: Recall@1, @5, @10.
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
    EvalSet,
    Features,
    TaskContext,
    TaskOutput,
    init_head,
    normalise_text,
    seeded,
    train_head,
)

FAMILY = "retrieval"
KS = (1, 5, 10)
PROJ_DIM = 128
TEMPERATURE = 0.07


def _value(record, source: str):
    return record.anatomy if source == "anatomy" else record.labels.get(source[len("label_"):])


def plan(data: EvalSet) -> tuple[list[str], list[str]]:
    tasks, skipped = [], []
    sources = [f"label_{n}" for n in sorted({n for r in data.records for n in r.labels})]
    if len({r.anatomy for r in data.records if r.anatomy}) >= 2:
        sources.append("anatomy")
    tasks += [f"{FAMILY}/image-image/{s}" for s in sources]
    if not sources:
        skipped.append(f"{FAMILY}/image-image: no label_<name> column and fewer than two anatomies")
    if any(r.report for r in data.records):
        tasks += [f"{FAMILY}/image-report", f"{FAMILY}/report-image"]
    else:
        skipped.append(f"{FAMILY}/image-report, {FAMILY}/report-image: no report column")
    return tasks, skipped


@dataclass
class Prepared:
    train: list[int]
    test: list[int]
    values: dict[int, object] | None = None  # image-image: label value per row
    texts: dict[int, str] | None = None  # image-report: normalised report per row


def prepare(task: str, data: EvalSet, ctx: TaskContext) -> Prepared | str:
    kind = task.split("/")[1]
    if kind == "image-image":
        source = task.split("/")[2]
        values = {i: _value(r, source) for i, r in enumerate(data.records) if _value(r, source) is not None}
        tr, te = [i for i in data.rows(TRAIN) if i in values], [i for i in data.rows(TEST) if i in values]
        if not tr or not te:
            return f"{task}: needs labelled rows in both train and test"
        return Prepared(tr, te, values=values)
    texts = {i: normalise_text(r.report) for i, r in enumerate(data.records) if r.report}
    tr, te = [i for i in data.rows(TRAIN) if i in texts], [i for i in data.rows(TEST) if i in texts]
    if len(tr) < 2 or not te:
        return f"{task}: needs at least 2 train and 1 test rows with a report"
    if ctx.text is None:
        return f"{task}: no text encoder available"
    return Prepared(tr, te, texts=texts)


class _Projections(nn.Module):
    def __init__(self, img_dim: int, txt_dim: int) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.LayerNorm(img_dim), nn.Linear(img_dim, PROJ_DIM))
        self.txt = nn.Linear(txt_dim, PROJ_DIM)


def image_report_similarity(data: EvalSet, prep: Prepared, feats: Features, ctx: TaskContext) -> np.ndarray:
    """Train the two projections and return test image x test report cosine similarity ``[M, M]``."""
    tr, te = prep.train, prep.test
    t_tr = ctx.text.embed([prep.texts[i] for i in tr])
    t_te = ctx.text.embed([prep.texts[i] for i in te])
    x_tr, x_te = feats.cls[tr], feats.cls[te]
    head = init_head(lambda: _Projections(feats.dim, ctx.text.dim), ctx.seed, "image-report")
    same = torch.tensor([[prep.texts[a] == prep.texts[b] for b in tr] for a in tr])

    def loss(idx: torch.Tensor) -> torch.Tensor:
        zi = F.normalize(head.img(x_tr[idx]), dim=-1)
        zt = F.normalize(head.txt(t_tr[idx]), dim=-1)
        logits = zi @ zt.t() / TEMPERATURE
        # Identical reports in a batch are not negatives of each other: soft targets over all matches.
        target = same[idx][:, idx].float()
        target = target / target.sum(1, keepdim=True)
        return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.log_softmax(0).t(), 1).mean())

    train_head(head, loss, len(tr), ctx.budget, seeded(ctx.seed, "image-report", "batches"))
    with torch.no_grad():
        zi = F.normalize(head.img(x_te), dim=-1)
        zt = F.normalize(head.txt(t_te), dim=-1)
    return (zi @ zt.t()).numpy()


def run(task: str, data: EvalSet, prep: Prepared, feats: Features, ctx: TaskContext) -> TaskOutput:
    kind = task.split("/")[1]
    if kind == "image-image":
        q = F.normalize(feats.cls[prep.test], dim=-1)
        g = F.normalize(feats.cls[prep.train], dim=-1)
        sim = (q @ g.t()).numpy()
        relevant = np.array([[prep.values[a] == prep.values[b] for b in prep.train] for a in prep.test])
    else:
        if "image-report" not in feats.memo:  # both directions share one trained projection pair
            feats.memo["image-report"] = image_report_similarity(data, prep, feats, ctx)
        sim = feats.memo["image-report"]
        relevant = np.array([[prep.texts[a] == prep.texts[b] for b in prep.test] for a in prep.test])
        if kind == "report-image":
            sim, relevant = sim.T, relevant.T
    recall = metrics.recall_at_k(sim, relevant, KS)
    keep = relevant.any(axis=1)  # [Q]: queries that have an answer (as recall_at_k)
    hit1 = relevant[np.arange(len(sim)), sim.argmax(axis=1)][keep].astype(np.float64)  # first max = stable top-1
    return TaskOutput({f"recall@{k}": v for k, v in recall.items()}, len(prep.test),
                      per_row={"recall@1": hit1}, rows=[r for r, k in zip(prep.test, keep) if k])
