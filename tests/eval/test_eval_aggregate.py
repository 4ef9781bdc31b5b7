"""Per-task example weights in the pooled federated evaluation."""

import pytest

from strategies.eval_aggregate import pooled_metrics, weight_key


def test_each_task_is_weighted_by_its_own_examples():
    a = {"num-examples": 100, "knn-anatomy": 0.5, "segmentation/mask/num-examples": 1,
         "segmentation/mask/dice-mean": 0.2, "segmentation/mask/random/dice-mean": 0.1}
    b = {"num-examples": 10, "knn-anatomy": 1.0, "segmentation/mask/num-examples": 3,
         "segmentation/mask/dice-mean": 0.6, "segmentation/mask/random/dice-mean": 0.3}
    out = pooled_metrics([a, b])
    assert out["num-examples"] == 110 and out["segmentation/mask/num-examples"] == 4
    assert out["knn-anatomy"] == pytest.approx((100 * 0.5 + 10 * 1.0) / 110)
    assert out["segmentation/mask/dice-mean"] == pytest.approx((0.2 + 3 * 0.6) / 4)
    assert out["segmentation/mask/random/dice-mean"] == pytest.approx((0.1 + 3 * 0.3) / 4)


def test_site_without_a_task_does_not_count_for_it():
    a = {"num-examples": 5, "landmarks/points/num-examples": 5, "landmarks/points/mre-px": 2.0}
    b = {"num-examples": 50}
    out = pooled_metrics([a, b])
    assert out["landmarks/points/mre-px"] == 2.0 and out["landmarks/points/num-examples"] == 5


def test_weight_key_is_the_longest_prefix():
    m = {"retrieval/image-image/anatomy/num-examples": 3, "retrieval/num-examples": 9}
    assert weight_key("retrieval/image-image/anatomy/recall@1", m) == "retrieval/image-image/anatomy/num-examples"
    assert weight_key("retrieval/image-report/recall@1", m) == "retrieval/num-examples"
    assert weight_key("loss", m) == "num-examples"
