"""Metrics against hand-computed confusion matrices."""

import pytest

from deft_llm.metrics import (au_metrics, classification_metrics, confusion_matrix, loso_folds,
                              paired_uf1_difference, plot_confusion)

CLASSES = ["a", "b", "c"]
TRUE = ["a", "a", "a", "b", "b", "c", "c", "c"]
PRED = ["a", "a", "b", "b", "a", "b", "b", None]  # class c is never predicted; one invalid answer


def test_confusion_matrix_by_hand():
    assert confusion_matrix(TRUE, PRED, CLASSES).tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 2, 0, 1]]


def test_uf1_uar_accuracy_with_a_class_never_predicted():
    m = classification_metrics(TRUE, PRED, CLASSES)
    # F1: a = 4/(4+1+1), b = 2/(2+3+1), c = 0 ; recall: 2/3, 1/2, 0
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(1 / 3)
    assert m["per_class"]["c"]["f1"] == 0
    assert m["uf1"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["accuracy"] == pytest.approx(3 / 8)
    assert m["invalid_predictions"] == 1 and m["n"] == 8
    assert m["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 2, 0]]


def test_perfect_and_absent_class():
    m = classification_metrics(["a", "b"], ["a", "b"], CLASSES)
    assert m["uf1"] == m["uar"] == m["accuracy"] == 1.0 and m["absent"] == ["c"]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        confusion_matrix(["a", "b"], ["a"], CLASSES)
    with pytest.raises(ValueError, match=r"true labels \['z'\]"):
        confusion_matrix(["z"], ["a"], CLASSES)


def test_au_metrics_by_hand():
    m = au_metrics([["AU1", "AU2"], ["AU12"], []], [["AU1"], ["AU12", "AU6"], ["AU4"]])
    # tp = 2 (AU1, AU12), fp = 2 (AU6, AU4), fn = 1 (AU2)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["per_au"]["AU2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_loso_never_shares_a_subject():
    folds = loso_folds(["s2", "s1", "s3", "s1"])
    assert [t for t, _ in folds] == ["s1", "s2", "s3"]
    for test, train in folds:
        assert test not in train and len(train) == 2
    with pytest.raises(ValueError, match="at least 2 subjects"):
        loso_folds(["s1", "s1"])


def test_confusion_png(tmp_path):
    path = tmp_path / "cm.png"
    plot_confusion([[2, 1], [0, 3]], ["a", "b"], path, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_uf1_difference():
    truth = ["a", "b"] * 20
    same = paired_uf1_difference(truth, truth, truth, ["a", "b"], resamples=50)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "resamples": 50}
    # b is right on 30 of 40 clips, a on all: a is better on every resample (or tied on none).
    worse = ["a", "b"] * 15 + ["b", "a"] * 5
    better = paired_uf1_difference(truth, truth, worse, ["a", "b"], resamples=200)
    assert better["difference"] == pytest.approx(1.0 - classification_metrics(truth, worse, ["a", "b"])["uf1"])
    assert better["difference"] == pytest.approx(0.25)
    assert 0 < better["low"] < better["difference"] < better["high"]
    # Swapping the models flips the sign and the interval.
    flipped = paired_uf1_difference(truth, worse, truth, ["a", "b"], resamples=200)
    assert flipped["difference"] == -better["difference"]
    assert (flipped["low"], flipped["high"]) == pytest.approx((-better["high"], -better["low"]))
    with pytest.raises(ValueError, match="40 labels but 40 and 39 predictions"):
        paired_uf1_difference(truth, truth, worse[:-1], ["a", "b"])


def test_paired_uf1_difference_draws_groups_together():
    """Two seeds' rows of the same clips, grouped by clip: the bootstrap draws clips, so the
    interval is the one clip set's, not the narrower one of twice as many independent rows."""
    truth = ["a", "b"] * 20
    worse = ["a", "b"] * 15 + ["b", "a"] * 5
    one = paired_uf1_difference(truth, truth, worse, ["a", "b"], resamples=200)
    clips = list(range(40))
    twice = paired_uf1_difference(truth * 2, truth * 2, worse * 2, ["a", "b"], resamples=200, groups=clips * 2)
    assert twice == one  # each drawn clip brings both copies: the same UF1 on every resample
    rows = paired_uf1_difference(truth * 2, truth * 2, worse * 2, ["a", "b"], resamples=200)
    assert rows["difference"] == one["difference"]
    assert rows["high"] - rows["low"] < one["high"] - one["low"]
    with pytest.raises(ValueError, match="40 labels but 39 groups"):
        paired_uf1_difference(truth, truth, worse, ["a", "b"], groups=clips[:-1])
