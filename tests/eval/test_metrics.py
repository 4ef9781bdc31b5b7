"""Each metric against values computed by hand (or the library's documented example)."""

import math

import numpy as np
import pytest

from xr0_core.eval import metrics


def test_dice_identical_is_one_and_disjoint_is_zero():
    a = np.zeros((6, 6), int)
    a[1:3, 1:3] = 1
    b = np.zeros((6, 6), int)
    b[4:6, 4:6] = 1
    assert metrics.dice_per_class(a, a, [1]) == {1: 1.0}
    assert metrics.dice_per_class(a, b, [1]) == {1: 0.0}


def test_dice_partial_overlap_and_empty_class_and_valid_mask():
    pred = np.array([[1, 1, 0, 0]])
    target = np.array([[1, 0, 0, 0]])
    # 2 * 1 / (2 + 1)
    assert metrics.dice_per_class(pred, target, [1, 2])[1] == pytest.approx(2 / 3)
    assert metrics.dice_per_class(pred, target, [1, 2])[2] == 1.0  # absent from both
    valid = np.array([[True, False, True, True]])  # the false positive sits on padding
    assert metrics.dice_per_class(pred, target, [1], valid=valid)[1] == 1.0


def test_box_iou_by_hand():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [2, 2, 3, 3], [0, 0, 2, 2]])
    # overlap 1, union 4 + 4 - 1 = 7; disjoint; identical
    np.testing.assert_allclose(metrics.box_iou(a, b), [1 / 7, 0.0, 1.0])


def test_radial_errors_pixels_mm_and_success_rate():
    pred = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    target = np.zeros((3, 2))
    err = metrics.radial_errors(pred, target)
    np.testing.assert_allclose(err, [5.0, 0.0, 1.0])
    assert err.mean() == pytest.approx(2.0)
    # (row, col) spacing: x uses column spacing 0.5, y row spacing 2 -> (1.5, 8) for the first point
    mm = metrics.radial_errors(pred, target, np.tile([2.0, 0.5], (3, 1)))
    assert mm[0] == pytest.approx(math.hypot(1.5, 8.0))
    assert metrics.success_rate(err, 1.0) == pytest.approx(2 / 3)


def test_recall_at_k_constructed():
    sim = np.array([[0.9, 0.8, 0.1],    # first hit at rank 1 (item 1)
                    [0.9, 0.8, 0.7],    # first hit at rank 2 (item 2 relevant, ranked third -> rank 2 0-based)
                    [0.1, 0.2, 0.3]])   # no relevant item: left out
    relevant = np.array([[False, True, False], [False, False, True], [False, False, False]])
    r = metrics.recall_at_k(sim, relevant, ks=(1, 2, 3))
    assert r == {1: 0.0, 2: 0.5, 3: 1.0}


def test_auroc_by_hand():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert metrics.binary_auroc(np.array([0.8, 0.4, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.75)
    assert metrics.binary_auroc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)  # tie
    assert math.isnan(metrics.binary_auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_macro_auroc_skips_absent_classes():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    target = np.array([0, 1, 0])  # class 2 absent: only classes 0 and 1 count, both perfectly ranked
    assert metrics.macro_auroc(probs, target) == pytest.approx(1.0)
    assert metrics.accuracy(probs.argmax(1), target) == 1.0


def test_bleu4_identical_disjoint_and_library_example():
    assert metrics.bleu4(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert metrics.bleu4(["a b c d"], ["w x y z"]) == pytest.approx(0.0)
    # sacrebleu's README example, first reference stream only.
    import sacrebleu

    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]
    assert metrics.bleu4(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score / 100)
    assert 0.0 < metrics.bleu4(hyps, refs) < 1.0


def test_rouge_l_library_example_by_hand():
    # rouge-score's README pair: LCS "the quick brown jumps the" = 5; P = 5/8, R = 5/9, F = 50/85.
    f = metrics.rouge_l(["The quick brown dog jumps on the log."], ["The quick brown fox jumps over the lazy dog"])
    assert f == pytest.approx(50 / 85)


def test_paired_bootstrap_ci_brackets_the_difference_and_degenerates_when_models_agree():
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.9
    b = rng.random(400) < 0.7
    low, high = metrics.paired_bootstrap_ci(a, b, seed=0)
    observed = a.mean() - b.mean()
    assert low < observed < high and high - low < 0.2
    assert metrics.paired_bootstrap_ci(a, a) == (0.0, 0.0)  # identical predictions: no uncertainty at all
    assert metrics.paired_bootstrap_ci(np.ones(5), np.zeros(5)) == (1.0, 1.0)


def test_paired_bootstrap_ci_resamples_whole_groups():
    # Nine rows of one patient favour model a, one row of another patient favours model b. Resampling
    # patients draws the second patient alone one time in four (difference -1); resampling rows almost never.
    a = np.array([1] * 9 + [0])
    b = np.array([0] * 9 + [1])
    by_patient = metrics.paired_bootstrap_ci(a, b, groups=["p1"] * 9 + ["p2"], seed=0)
    by_row = metrics.paired_bootstrap_ci(a, b, seed=0)
    assert by_patient[0] == -1.0 and by_row[0] > 0.0
    with pytest.raises(ValueError, match="one length"):
        metrics.paired_bootstrap_ci(a, b[:3])
