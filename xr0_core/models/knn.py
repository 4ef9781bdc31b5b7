"""Weighted k-nearest-neighbour classification on frozen features: the one k-NN of the project (D8).

Used by the evaluation suite's classification task and by the SSL health probe (leave-one-out on its probe
images). A non-parametric head, so it sits with the models, below training and evaluation.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024, *,
                leave_one_out: bool = False) -> torch.Tensor:
    """Class scores of each test row from its ``k`` most similar training rows.

    Votes are weighted by ``exp(cos / temperature)`` as in DINO's k-NN evaluation. Features should be
    L2-normalised (cosine = dot product). ``leave_one_out``: the test rows ARE the training rows, and a row
    never votes for itself.

    Shapes:
        train_feats [N, D], train_labels long [N], test_feats [M, D] (M = N with ``leave_one_out``)
        -> scores [M, C].

    References:
        Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination" (2018);
        Caron et al., DINO (2021), ``eval_knn.py``.
    """
    if train_feats.shape[0] == 0:
        raise ValueError("k-NN needs at least one training sample")
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_feats.shape[0]} training features but {train_labels.shape[0]} labels")
    labels = train_labels.long()
    c = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    if leave_one_out and test_feats.shape[0] != train_feats.shape[0]:
        raise ValueError("leave_one_out: the test rows must be the training rows")
    k = max(1, min(int(k), train_feats.shape[0] - int(leave_one_out)))
    train = train_feats.float()
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        sim = test_feats[start:start + chunk].float() @ train.t()  # [m, N]
        if leave_one_out:
            rows = torch.arange(sim.shape[0])
            sim[rows, start + rows] = -float("inf")
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], c)
        votes.scatter_add_(1, labels[top_idx], weights)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, c)


def knn_correct(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Per-row correctness (bool ``[M]``) of :func:`knn_predict` on ``test_labels`` (long ``[M]``)."""
    if test_feats.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    c = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes=c).argmax(dim=1)
    return pred == test_labels.long()


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``test_labels`` (long [M]); NaN for an empty test set."""
    if test_feats.shape[0] == 0:
        return float("nan")
    return float(knn_correct(train_feats, train_labels, test_feats, test_labels, k, temperature).float().mean())
