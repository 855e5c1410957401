"""GLUE metrics against values worked out by hand."""

import math

import pytest

from peft_cli.data.metrics import compute


def test_accuracy_and_f1_by_hand():
    pred = [1, 1, 0, 0, 1]
    gold = [1, 0, 0, 1, 1]
    # tp=2 fp=1 fn=1 -> precision 2/3, recall 2/3, f1 2/3; 3 of 5 right
    m = compute(["accuracy", "f1"], pred, gold)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3)


def test_matthews_by_hand():
    pred = [1, 1, 0, 0, 1, 0]
    gold = [1, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 2, 2, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute(["matthews_correlation"], pred, gold)["matthews_correlation"] == pytest.approx(mcc)


def test_pearson_spearman_by_hand():
    gold = [1.0, 2.0, 3.0, 4.0]
    pred = [1.0, 3.0, 2.0, 4.0]
    # pearson: deviations (-1.5,-.5,.5,1.5) vs (-1.5,.5,-.5,1.5): cov=4, var=5 each -> 0.8
    # spearman on ranks equals pearson here (values are ranks)
    m = compute(["pearson", "spearmanr"], pred, gold)
    assert m["pearson"] == pytest.approx(0.8)
    assert m["spearmanr"] == pytest.approx(0.8)


def test_suffix_for_mismatched():
    assert compute(["accuracy"], [0, 1], [0, 0], suffix="_mm") == {"accuracy_mm": 0.5}


def test_constant_prediction_gives_zero_correlation():
    assert compute(["pearson"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        compute(["accuracy"], [1], [1, 0])
    with pytest.raises(ValueError):
        compute(["bleu"], [1], [1])
