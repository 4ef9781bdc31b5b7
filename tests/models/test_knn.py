"""Weighted k-NN on hand-placed unit vectors: the votes, not just the wiring."""

import torch
import torch.nn.functional as F

from xr0_core.models.knn import knn_accuracy, knn_correct, knn_predict


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_nearest_neighbours_vote_with_similarity_weights():
    train = _unit([1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8])
    labels = torch.tensor([0, 0, 1, 1, 1])
    test = _unit([1, 0.05], [0.05, 1])
    # k = 5: every training row votes. Class 1 has three rows, but far from the first query: the
    # exp(cos / 0.07) weights must let the two close class-0 rows win there.
    scores = knn_predict(train, labels, test, k=5)
    assert scores.argmax(1).tolist() == [0, 1]
    assert torch.equal(knn_correct(train, labels, test, torch.tensor([0, 0]), k=5), torch.tensor([True, False]))
    assert knn_accuracy(train, labels, test, torch.tensor([0, 0]), k=5) == 0.5
    # With a flat temperature the vote is a head count: three class-1 rows outvote two class-0 rows.
    assert knn_predict(train, labels, test, k=5, temperature=1e6).argmax(1).tolist() == [1, 1]


def test_leave_one_out_never_lets_a_row_vote_for_itself():
    feats = _unit([1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99])
    labels = torch.tensor([0, 1, 1, 0])  # each row's nearest other row has the other label
    with_self = knn_predict(feats, labels, feats, k=1).argmax(1)
    loo = knn_predict(feats, labels, feats, k=1, leave_one_out=True).argmax(1)
    assert with_self.tolist() == [0, 1, 1, 0]  # its own vote wins
    assert loo.tolist() == [1, 0, 0, 1]  # its neighbour's label
