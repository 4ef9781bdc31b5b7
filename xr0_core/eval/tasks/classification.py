"""Classification on frozen features: a linear probe on ``eval.readout`` (:mod:`xr0_core.eval.readouts`,
its C chosen by CV by patient: :mod:`xr0_core.eval.linear_probe`) and weighted k-NN on the CLS token (D8).

One task per ``label_<name>`` column (``classification/label_<name>``) and one for the anatomy when at least
two anatomies are present (``classification/anatomy``). Binary labels report AUROC; labels with more than
two classes report accuracy and macro one-vs-rest AUROC. Rows without the label are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xr0_core.eval import metrics
from xr0_core.eval.linear_probe import probe
from xr0_core.eval.tasks.base import TEST, TRAIN, EvalSet, Features, TaskContext, TaskOutput

FAMILY = "classification"


def _value(record, source: str):
    if source == "anatomy":
        return record.anatomy
    return record.labels.get(source[len("label_"):])


def plan(data: EvalSet) -> tuple[list[str], list[str]]:
    names = sorted({n for r in data.records for n in r.labels})
    tasks = [f"{FAMILY}/label_{n}" for n in names]
    if len({r.anatomy for r in data.records if r.anatomy}) >= 2:
        tasks.append(f"{FAMILY}/anatomy")
    skipped = [] if tasks else [f"{FAMILY}: no label_<name> column and fewer than two anatomies"]
    return tasks, skipped


@dataclass
class Prepared:
    rows: dict[str, list[int]]
    y: dict[str, np.ndarray]  # class index per row
    classes: list
    binary: bool


def prepare(task: str, data: EvalSet, ctx: TaskContext) -> Prepared | str:
    """Rows with the label, class indices; a string says why the task cannot run on this data."""
    source = task.split("/", 1)[1]
    rows = {p: [i for i in data.rows(p) if _value(data.records[i], source) is not None] for p in (TRAIN, TEST)}
    classes = sorted({_value(data.records[i], source) for p in rows for i in rows[p]})
    if len({_value(data.records[i], source) for i in rows[TRAIN]}) < 2:
        return f"{task}: the train rows hold fewer than two classes"
    if not rows[TEST]:
        return f"{task}: no test row has this label"
    if len({_value(data.records[i], source) for i in rows[TEST]}) < 2:
        return f"{task}: the test rows hold a single class (AUROC undefined)"
    index = {c: k for k, c in enumerate(classes)}
    y = {p: np.array([index[_value(data.records[i], source)] for i in rows[p]], dtype=np.int64) for p in rows}
    binary = source != "anatomy" and set(classes) <= {0, 1}
    return Prepared(rows, y, classes, binary)


def _knn(x_tr: torch.Tensor, y_tr: np.ndarray, x_te: torch.Tensor, n_classes: int, k: int) -> np.ndarray:
    from xr0_core.models.knn import knn_predict

    votes = knn_predict(F.normalize(x_tr, dim=-1), torch.as_tensor(y_tr), F.normalize(x_te, dim=-1), k=k,
                        num_classes=n_classes)
    return (votes / votes.sum(1, keepdim=True).clamp_min(1e-12)).numpy()


def scores(probs: np.ndarray, y: np.ndarray, binary: bool) -> dict[str, float]:
    """AUROC and accuracy for a binary label (accuracy is what the paired interval is on: AUROC does not
    decompose per image); accuracy and macro AUROC otherwise."""
    if binary:
        return {"auroc": metrics.binary_auroc(probs[:, 1], y), "accuracy": metrics.accuracy(probs.argmax(1), y)}
    return {"accuracy": metrics.accuracy(probs.argmax(1), y), "macro-auroc": metrics.macro_auroc(probs, y)}


def run(task: str, data: EvalSet, prep: Prepared, feats: Features, ctx: TaskContext) -> TaskOutput:
    tr, te = prep.rows[TRAIN], prep.rows[TEST]
    c = len(prep.classes)
    y_tr, y_te = prep.y[TRAIN], prep.y[TEST]
    out: dict[str, float] = {}
    # The linear probe reads eval.readout (e.g. CLS + a 4x4 pooling of the patch tokens); k-NN stays on the
    # CLS token (cosine neighbours of a concatenation would weight its parts by their norms).
    x = feats.probe_input
    patients = [data.records[i].patient_id or str(data.records[i].path) for i in tr]
    lin, _c = probe(x[tr].numpy(), y_tr, x[te].numpy(), c, ctx.seed, c=ctx.probe_c, groups=patients)
    out.update({f"linear-{k}": v for k, v in scores(lin, y_te, prep.binary).items()})
    x_tr, x_te = feats.cls[tr], feats.cls[te]
    knn = _knn(x_tr, y_tr, x_te, c, ctx.knn_k)
    out.update({f"knn-{k}": v for k, v in scores(knn, y_te, prep.binary).items()})
    # Per test row [M]: the paired interval is on linear accuracy (first); k-NN correctness for the probe's own.
    per_row = {"linear-accuracy": (lin.argmax(1) == y_te).astype(np.float64),
               "knn-accuracy": (knn.argmax(1) == y_te).astype(np.float64)}
    return TaskOutput(out, len(te), per_row=per_row, rows=list(te))
