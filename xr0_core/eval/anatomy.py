"""Anatomy recognition on frozen features: the quick "did pretraining learn anything" probe.

Used by the federated evaluation round (each hospital on its own held-out images), by ``xr0 pretrain``
and by the pooled-vs-federated comparison of ``xr0 simulate --compare-pooled``. Every number is reported
next to the same measurement for the random-init backbone (the round-0 global weights), measured in the
same call.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from xr0_core.config import XR0Config
from xr0_core.data.splits import holdout_split
from xr0_core.eval.baseline import backbone_from_shared, random_init_backbone  # noqa: F401 (re-exported)
from xr0_core.runtime import derive_seed, resolve_device


def labelled_features(cfg: XR0Config, backbone: nn.Module, records: Sequence[Any], names: list[str],
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] and anatomy class indices [N] of the decodable, anatomy-labelled records."""
    from xr0_core.data.dataset import ImageCache
    from xr0_core.eval.features import extract_features

    cache = ImageCache([r for r in records if r.anatomy in names], cfg.train.load_size, progress=False)
    feats = extract_features(backbone, cache, cfg.model.img_size, batch_size=64, device=device,
                             precision=cfg.train.precision)
    labels = torch.tensor([names.index(r.anatomy) for r in cache.kept], dtype=torch.long)
    return feats, labels


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, seed: int = 0) -> float:
    """Multinomial logistic regression on frozen features (L2, lbfgs); top-1 accuracy on the test rows."""
    if len(test_y) == 0 or len(torch.unique(train_y)) < 2:
        return float("nan")
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    clf.fit(train_x.numpy(), train_y.numpy())
    return float((clf.predict(test_x.numpy()) == test_y.numpy()).mean())


def pixel_anatomy_scores(cfg: XR0Config, train: Sequence[Any], test: Sequence[Any], names: list[str]) -> dict[str, float]:
    """:func:`anatomy_scores` of the raw-pixel baseline (:mod:`xr0_core.eval.baseline`): the same centre view
    the backbone sees, flattened, the same k-NN and linear probe."""
    from xr0_core.data.dataset import ImageCache
    from xr0_core.data.views import center_view
    from xr0_core.eval.knn import knn_accuracy

    def xy(records: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        cache = ImageCache([r for r in records if r.anatomy in names], cfg.train.load_size, progress=False)
        if len(cache) == 0:
            return torch.zeros(0, cfg.model.img_size ** 2), torch.zeros(0, dtype=torch.long)
        x = torch.stack([center_view(cache[i], cfg.model.img_size).flatten() for i in range(len(cache))])
        return x, torch.tensor([names.index(r.anatomy) for r in cache.kept], dtype=torch.long)

    tr_x, tr_y = xy(train)
    te_x, te_y = xy(test)
    if len(tr_y) == 0 or len(te_y) == 0:
        return {"knn": float("nan"), "linear": float("nan"), "n_test": float(len(te_y))}
    unit = torch.nn.functional.normalize
    return {"knn": knn_accuracy(unit(tr_x, dim=-1), tr_y, unit(te_x, dim=-1), te_y, k=cfg.eval.knn_k),
            "linear": linear_probe_accuracy(tr_x, tr_y, te_x, te_y, seed=cfg.seed), "n_test": float(len(te_y))}


def anatomy_scores(cfg: XR0Config, backbone: nn.Module, train: Sequence[Any], test: Sequence[Any],
                   names: list[str], device: torch.device) -> dict[str, float]:
    from xr0_core.eval.knn import knn_accuracy

    tr_x, tr_y = labelled_features(cfg, backbone, train, names, device)
    te_x, te_y = labelled_features(cfg, backbone, test, names, device)
    if len(tr_y) == 0 or len(te_y) == 0:
        return {"knn": float("nan"), "linear": float("nan"), "n_test": float(len(te_y))}
    return {
        "knn": knn_accuracy(tr_x, tr_y, te_x, te_y, k=cfg.eval.knn_k),
        "linear": linear_probe_accuracy(tr_x, tr_y, te_x, te_y, seed=cfg.seed),
        "n_test": float(len(te_y)),
    }


def knn_anatomy_report(cfg: XR0Config, records: Sequence[Any], shared: Mapping[str, torch.Tensor],
                       *, site: str = "") -> dict[str, float]:
    """A hospital's evaluation of the global backbone vs random init on its own held-out images.

    Returns scalars only: ``knn-anatomy``, ``linear-anatomy`` and their ``-random`` twins, and
    ``num-examples`` (held-out images; 0 when the site has no anatomy labels, so the server drops the reply
    from the weighted mean instead of averaging in a NaN).
    """
    device = resolve_device(cfg.train.device)
    labelled = [r for r in records if getattr(r, "anatomy", None)]
    train, test = holdout_split(labelled, derive_seed(cfg.seed, site))
    names = sorted({r.anatomy for r in train})
    if not train or not test or len(names) < 2:
        return {"num-examples": 0}
    out: dict[str, float] = {}
    for tag, make in (("", lambda: backbone_from_shared(cfg, shared)), ("-random", lambda: random_init_backbone(cfg))):
        scores = anatomy_scores(cfg, make().to(device), train, test, names, device)
        out[f"knn-anatomy{tag}"] = scores["knn"]
        out[f"linear-anatomy{tag}"] = scores["linear"]
        out["num-examples"] = int(scores["n_test"])
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
