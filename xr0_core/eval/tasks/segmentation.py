"""Segmentation from ``mask_path``: a light decoder on frozen patch tokens; Dice per class and mean (D8).

Masks are single-channel images of the image's exact size holding class indices (0 = background). An 8-bit
mask holding only 0 and 255 is read as binary (255 = class 1), the way most tools export binary masks.
Masks are resized (nearest) into the letterbox view, and Dice is computed there, on image pixels only
(padding excluded), per image and averaged over the test images; ``dice-mean`` averages the foreground
classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
    ViewGeometry,
    init_head,
    seeded,
    train_head,
    where,
)

FAMILY = "segmentation"
TASK = f"{FAMILY}/mask"
IGNORE = -1
MAX_CLASSES = 64


def plan(data: EvalSet) -> tuple[list[str], list[str]]:
    if any(r.mask_path is not None for r in data.records):
        return [TASK], []
    return [], [f"{FAMILY}: no mask_path column"]


def read_mask(record, geo: ViewGeometry) -> np.ndarray:
    """Class indices ``[H, W]`` int64 of ``record.mask_path``; :class:`EvalDataError` says what is wrong."""
    from PIL import Image

    try:
        with Image.open(record.mask_path) as im:
            if im.mode in ("RGB", "RGBA", "LA", "P"):
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im)
    except FileNotFoundError:
        raise EvalDataError(f"{where(record)}: mask_path: file not found: {record.mask_path}") from None
    except Exception as exc:  # noqa: BLE001 -- PIL raises many types for a bad file
        raise EvalDataError(f"{where(record)}: mask_path: unreadable mask ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2:
        raise EvalDataError(f"{where(record)}: mask_path: expected a single-channel mask, got shape {arr.shape}")
    if arr.shape != (geo.height, geo.width):
        raise EvalDataError(
            f"{where(record)}: mask_path: mask is {arr.shape[1]}x{arr.shape[0]} (WxH) but the image is "
            f"{geo.width}x{geo.height}; masks must have the image's size")
    values = np.unique(arr)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(values == np.round(values)):
        raise EvalDataError(f"{where(record)}: mask_path: mask holds non-integer values; use class indices")
    if arr.dtype == np.uint8 and set(values.tolist()) <= {0, 255}:
        return (arr == 255).astype(np.int64)
    if values.min() < 0 or values.max() >= MAX_CLASSES:
        raise EvalDataError(f"{where(record)}: mask_path: class values must be in [0, {MAX_CLASSES}), "
                            f"found {values.min()}..{values.max()}")
    return arr.astype(np.int64)


def mask_to_view(mask: np.ndarray, geo: ViewGeometry) -> np.ndarray:
    """``[H, W]`` -> ``[S, S]`` (nearest), :data:`IGNORE` on the padding."""
    top, left, h, w = geo.inner
    small = F.interpolate(torch.as_tensor(mask)[None, None].float(), size=(h, w), mode="nearest")[0, 0]
    out = np.full((geo.size, geo.size), IGNORE, dtype=np.int64)
    out[top:top + h, left:left + w] = small.long().numpy()
    return out


@dataclass
class Prepared:
    train: list[int]
    test: list[int]
    masks: dict[int, np.ndarray]  # view-space class maps
    n_classes: int


def prepare(task: str, data: EvalSet, ctx: TaskContext) -> Prepared | str:
    masks = {i: mask_to_view(read_mask(r, data.geometry[i]), data.geometry[i])
             for i, r in enumerate(data.records) if r.mask_path is not None}
    tr, te = [i for i in data.rows(TRAIN) if i in masks], [i for i in data.rows(TEST) if i in masks]
    if not tr or not te:
        return f"{task}: needs rows with a mask in both train and test"
    n_classes = int(max(m.max() for m in masks.values())) + 1
    if n_classes < 2:
        return f"{task}: every mask is empty (background only)"
    return Prepared(tr, te, masks, n_classes)


def run(task: str, data: EvalSet, prep: Prepared, feats: Features, ctx: TaskContext) -> TaskOutput:
    tr, te = prep.train, prep.test
    head = init_head(lambda: PatchDecoder(feats.dim, prep.n_classes, feats.grid, data.size), ctx.seed, task)
    y_tr = torch.as_tensor(np.stack([prep.masks[i] for i in tr]))
    p_tr = feats.patches[tr]

    def loss(idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(p_tr[idx]), y_tr[idx], ignore_index=IGNORE)

    train_head(head, loss, len(tr), ctx.budget, seeded(ctx.seed, task, "batches"))
    classes = list(range(1, prep.n_classes))
    per_class: dict[int, list[float]] = {c: [] for c in classes}
    examples, per_image = [], []
    with torch.no_grad():
        for start in range(0, len(te), 32):
            rows = te[start:start + 32]
            pred = head(feats.patches[rows]).argmax(1).numpy()
            for k, i in enumerate(rows):
                target = prep.masks[i]
                dice = metrics.dice_per_class(pred[k], target, classes, valid=target != IGNORE)
                for c, d in dice.items():
                    per_class[c].append(d)
                per_image.append(float(np.mean(list(dice.values()))))
                if len(examples) < ctx.examples:
                    examples.append({"image": data.views[i, 0].float().numpy(), "pred": pred[k].astype(np.uint8),
                                     "target": target})
    out = {f"dice-{c}": float(np.mean(v)) for c, v in per_class.items()}
    out["dice-mean"] = float(np.mean(list(out.values())))
    return TaskOutput(out, len(te), examples, per_row={"dice-mean": np.asarray(per_image)}, rows=list(te))
