"""Zero-shot evaluation of an mXR-0 model with its OWN projections and decoder (no head trained here).

- ``zeroshot/image-report``: each held-out image ranks the held-out reports by the cosine of the model's image
  and text projections; ``zeroshot/report-image``: the other way round. A hit is a report whose normalised
  text equals the query's own (templated or normal reports repeat). Recall@1, @5, @10.
- ``zeroshot/report-generation``: the model's caption decoder drafts a report for each held-out image
  (greedy); BLEU-4 and ROUGE-L against the prepared reference (findings / impression, lower case).

Every number comes with the same measurement for the round-0 (random image weights, same text tower)
model, as the rest of the suite (D8). Retrieval needs a trained contrastive term, generation a trained
decoder: a model without the term reports the task as skipped, not as a chance-level number.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xr0_core.config import XR0Config
from xr0_core.data.reports import prepare_report
from xr0_core.eval import metrics
from xr0_core.eval.tasks.base import TEST, build_eval_set, normalise_text
from xr0_core.runtime import autocast, derive_seed, resolve_device

log = logging.getLogger(__name__)

FAMILY = "zeroshot"
I2R, R2I, GEN = f"{FAMILY}/image-report", f"{FAMILY}/report-image", f"{FAMILY}/report-generation"
KS = (1, 5, 10)
RANDOM_TAG = "random"


@torch.no_grad()
def image_tokens(model: Any, views: torch.Tensor, device: torch.device, batch_size: int = 32,
                 precision: str = "auto") -> torch.Tensor:
    """Student backbone tokens ``[N, 1+P, D]`` (float32 CPU) of letterboxed views ``[N, 1, S, S]`` in [0, 1]."""
    from xr0_core.data.transforms import normalize

    backbone = model.student["backbone"]
    out = []
    for s in range(0, len(views), batch_size):
        x = normalize(views[s:s + batch_size].float()).to(device)
        with autocast(device, precision):
            out.append(backbone.forward_features(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def zeroshot_scores(model: Any, views: torch.Tensor, texts: Sequence[str], *, device: torch.device | str = "cpu",
                    batch_size: int = 32, precision: str = "auto", examples: int = 0) -> tuple[dict[str, dict[str, float]], list]:
    """Zero-shot retrieval and report generation of ``model`` on image-report pairs.

    Parameters
    ----------
    model : MultimodalXR0
    views : Tensor [N, 1, S, S] in [0, 1] (evaluation letterbox views)
    texts : N prepared reports (:func:`xr0_core.data.reports.prepare_report`)
    examples : generated / reference pairs to return (local use only: they hold report text)

    Returns
    -------
    metrics : dict task -> {metric: value}
    examples : list of {"generated", "reference"}
    """
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    out: dict[str, dict[str, float]] = {}
    kept: list = []
    try:
        tok = image_tokens(model, views, device, batch_size, precision)
        norm = [normalise_text(t) for t in texts]
        if getattr(model, "contrastive_loss", None) is not None:
            enc = model.tokenizer(list(texts), padding=True, truncation=True, max_length=model.max_tokens,
                                  return_tensors="pt")
            zt = torch.cat([model.encode_text(enc["input_ids"][s:s + batch_size].to(device),
                                              enc["attention_mask"][s:s + batch_size].bool().to(device)).float().cpu()
                            for s in range(0, len(texts), batch_size)])
            zi = model.encode_image(tok[:, 0].to(device)).float().cpu()
            sim = (F.normalize(zi, dim=-1) @ F.normalize(zt, dim=-1).t()).numpy()
            relevant = np.array([[a == b for b in norm] for a in norm])
            for task, s, r in ((I2R, sim, relevant), (R2I, sim.T, relevant.T)):
                out[task] = {f"recall@{k}": v for k, v in metrics.recall_at_k(s, r, KS).items()}
        if getattr(model, "caption_loss", None) is not None:
            t = model.tokenizer
            words = model.word_embeddings
            decoder = model.student["caption"]
            hyps = []
            for s in range(0, len(texts), batch_size):
                ids = decoder.generate(tok[s:s + batch_size].to(device), words, t.cls_token_id, t.sep_token_id,
                                       t.pad_token_id, model.max_tokens).cpu().tolist()
                for seq in ids:
                    seq = seq[:seq.index(t.sep_token_id)] if t.sep_token_id in seq else seq
                    hyps.append(normalise_text(t.decode(seq, skip_special_tokens=True)))
            out[GEN] = {"bleu4": metrics.bleu4(hyps, norm), "rouge-l": metrics.rouge_l(hyps, norm)}
            kept = [{"generated": h, "reference": r} for h, r in list(zip(hyps, norm))[:examples]]
    finally:
        model.train(was_training)
    return out, kept


def evaluate_zeroshot(cfg: XR0Config, records: Sequence[Any], shared: Mapping[str, torch.Tensor] | None, *,
                      rows: str = TEST, device: torch.device | str | None = None,
                      reader: Any = None) -> dict[str, Any]:
    """Zero-shot numbers of the model in ``shared`` (None: round-0 weights) and of the round-0 model.

    Parameters
    ----------
    records : SiteRecords; images with a report in the evaluation ``rows`` are scored
    rows : "test" (the suite's held-out split) or "all" (the caller already holds out, e.g. ``xr0 pretrain``)

    Returns
    -------
    dict
        ``tasks`` / ``baseline_random``: task -> {metric: value}; ``counts``: task -> pairs scored;
        ``skipped``: reasons.
    """
    from xr0_core.ssl.factory import build_model

    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    result: dict[str, Any] = {"tasks": {}, "baseline_random": {}, "counts": {}, "skipped": []}
    with_report = [r for r in records if prepare_report(getattr(r, "report", None))]
    if not with_report:
        result["skipped"].append(f"{FAMILY}: no report column")
        return result
    data = build_eval_set(with_report, cfg.model.img_size, derive_seed(cfg.seed, "eval-split"), reader)
    idx = list(range(len(data))) if rows == "all" else data.rows(TEST)
    if len(idx) < 2:
        result["skipped"].append(f"{FAMILY}: needs at least 2 held-out images with a report")
        return result
    views = data.views[idx]
    texts = [prepare_report(data.records[i].report) for i in idx]
    for key, weights in (("tasks", shared), ("baseline_random", None)):
        model = build_model(cfg)
        if weights is not None:
            model.load_shared_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
        scores, _ = zeroshot_scores(model, views, texts, device=device, batch_size=cfg.eval.batch_size,
                                    precision=cfg.train.precision)
        result[key] = scores
        del model
    for task in result["tasks"]:
        result["counts"][task] = len(idx)
    if cfg.multimodal.contrastive == "none" or cfg.multimodal.contrastive_weight == 0:
        result["skipped"].append(f"{I2R}, {R2I}: no contrastive term trained (multimodal.contrastive = none)")
    if cfg.multimodal.caption_weight == 0:
        result["skipped"].append(f"{GEN}: no caption decoder trained (multimodal.caption-weight = 0)")
    return result


def add_zeroshot(result: Any, cfg: XR0Config, records: Sequence[Any], shared: Mapping[str, torch.Tensor] | None,
                 *, device: torch.device | str | None = None, strict: bool = True) -> None:
    """Fold :func:`evaluate_zeroshot` into an :class:`~xr0_core.eval.suite.EvalResult` (in place), so the
    zero-shot tasks travel as ``zeroshot/<task>/<metric>`` and ``.../random/<metric>`` like every task."""
    try:
        zs = evaluate_zeroshot(cfg, records, shared, device=device)
    except Exception as exc:  # noqa: BLE001 -- a hospital keeps its other evaluation numbers
        if strict:
            raise
        log.warning("zero-shot evaluation failed: %s", exc)
        result.skipped.append(f"{FAMILY}: failed ({type(exc).__name__}: {exc})")
        return
    result.tasks.update(zs["tasks"])
    result.baseline_random.update(zs["baseline_random"])
    result.counts.update(zs["counts"])
    result.skipped.extend(zs["skipped"])
