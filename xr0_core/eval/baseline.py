"""The two baselines every backbone number is read against (D8): random init and raw pixels.

- **Random init**: the student backbone with the round-0 weights every site and the server build from
  ``derive_seed(cfg.seed, "init")`` (:func:`random_init_backbone`). A pretrained backbone that does not beat
  it has learned nothing the architecture did not already give.
- **Raw pixels**: the same resized, normalised evaluation view the backbone sees, flattened
  (``[N, 1, S, S] -> [N, S*S]``), fed to the same head on the same split (:func:`pixel_features`). A
  backbone below it is worse than no backbone at all for that task.

This module is the one place both are built: the evaluation suite, the anatomy probe, ``xr0 pretrain``, the
pooled comparison of ``xr0 simulate`` and ``bench/real_probe.py`` all call it. Paired, patient-level
bootstrap intervals of AUROC differences between two score vectors on the same test rows are in
:func:`paired_bootstrap_auroc_ci`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from xr0_core.config import XR0Config

RANDOM = "random"
PIXELS = "pixels"

# Task families whose heads read only one vector per image (CLS or pixels): the raw-pixel baseline applies.
# Dense tasks (segmentation, landmarks, grounding) read patch tokens, which a flattened image does not have;
# image-report retrieval needs a text tower and is about the image-text projection, not the features.
PIXEL_TASK_PREFIXES = ("classification/", "retrieval/image-image/")


def random_init_backbone(cfg: XR0Config) -> nn.Module:
    """The random-init baseline: the student backbone with the round-0 weights (eval mode, CPU)."""
    return backbone_from_shared(cfg, None)


def backbone_from_shared(cfg: XR0Config, shared: Mapping[str, torch.Tensor] | None) -> nn.Module:
    """The student backbone with ``shared`` weights loaded (``None``: the random-init round-0 weights)."""
    from xr0_core.ssl.factory import build_model

    model = build_model(cfg)
    if shared is not None:
        model.load_shared_state_dict({k: torch.as_tensor(v) for k, v in shared.items()}, strict=True)
    return model.student["backbone"].eval()


def pixel_applicable(task: str) -> bool:
    """Whether the raw-pixel baseline is defined for ``task`` (a single vector per image suffices)."""
    return task.startswith(PIXEL_TASK_PREFIXES)


def pixel_vectors(views: torch.Tensor) -> torch.Tensor:
    """Raw-pixel features: the normalised evaluation view, flattened.

    Shapes: ``views [N, 1, S, S]`` (float in [0, 1], as :class:`~xr0_core.eval.tasks.base.EvalSet` holds
    them) -> ``[N, S*S]`` float32, normalised exactly as the backbone's input (so the head sees the same
    numbers the backbone does).
    """
    from xr0_core.data.transforms import normalize

    if views.ndim != 4:
        raise ValueError(f"pixel_vectors expects views [N, C, S, S], got {tuple(views.shape)}")
    return normalize(views.float()).flatten(1)


def pixel_features(data: Any) -> Any:
    """:class:`~xr0_core.eval.tasks.base.Features` of the raw-pixel baseline for an ``EvalSet``: ``cls`` is
    :func:`pixel_vectors` of its views, no patch tokens."""
    from xr0_core.eval.tasks.base import Features

    return Features(pixel_vectors(data.views), None, 0)


def paired_bootstrap_auroc_ci(scores_a: np.ndarray, scores_b: np.ndarray, target: np.ndarray,
                              groups: Sequence | None = None, n_resamples: int = 2000, level: float = 0.95,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``AUROC(scores_a) - AUROC(scores_b)`` on the same test rows.

    Each resample draws whole ``groups`` (patients: one patient's images are not independent draws) with
    replacement and scores both models on the same draw; draws with a single class are redrawn.

    Parameters
    ----------
    scores_a, scores_b : float [M]
        Positive-class scores of the two models on the same rows.
    target : {0, 1} [M]
    groups : sequence [M], optional
        Resampling unit of each row (default: every row its own unit).

    Returns
    -------
    (low, high) : floats; ``nan`` when the rows hold one class only.
    """
    from xr0_core.eval.metrics import binary_auroc

    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    y = np.asarray(target).astype(int)
    if not (a.shape == b.shape == y.shape) or a.ndim != 1:
        raise ValueError(f"scores and target must be 1-D and of one length, got {a.shape}, {b.shape}, {y.shape}")
    if len(set(y.tolist())) < 2:
        return float("nan"), float("nan")
    keys = np.arange(len(y)) if groups is None else np.unique(np.asarray(list(groups)), return_inverse=True)[1]
    members = [np.flatnonzero(keys == g) for g in range(int(keys.max()) + 1)]
    rng = np.random.default_rng(seed)
    diffs: list[float] = []
    tries = 0
    while len(diffs) < n_resamples and tries < 20 * n_resamples:
        tries += 1
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
        if y[rows].min() == y[rows].max():
            continue
        diffs.append(binary_auroc(a[rows], y[rows]) - binary_auroc(b[rows], y[rows]))
    if not diffs:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    return float(np.quantile(diffs, tail)), float(np.quantile(diffs, 1.0 - tail))
