"""The GLUE metrics on small hand-worked examples; every expected number is derived in a comment."""

import math

import pytest

from data import TASKS, accuracy, f1, glue_metrics, main_score, matthews_corrcoef, pearson, spearman

# A binary example used below. Its confusion matrix (rows = true label, columns = prediction):
#            pred 0  pred 1
#   true 0     2       1        TN = 2, FP = 1
#   true 1     1       4        FN = 1, TP = 4
LABELS = [0, 0, 0, 1, 1, 1, 1, 1]
PREDS = [0, 0, 1, 0, 1, 1, 1, 1]


def test_accuracy_counts_exact_matches():
    assert accuracy(PREDS, LABELS) == 6 / 8  # TN + TP = 6 of 8
    assert accuracy([2, 1, 0], [2, 1, 1]) == 2 / 3  # multiclass works the same way


def test_f1_of_positive_class():
    # precision 4/5, recall 4/5, F1 = 2 TP / (2 TP + FP + FN) = 8 / 10
    assert f1(PREDS, LABELS) == pytest.approx(0.8, abs=1e-12)


def test_f1_is_zero_without_positives():
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0  # no true and no predicted positives: sklearn's zero_division=0
    assert f1([0, 0, 0], [1, 0, 1]) == 0.0  # TP = 0


def test_matthews_on_a_two_by_two_table():
    # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (8 - 1) / sqrt(5 * 5 * 3 * 3) = 7 / 15
    assert matthews_corrcoef(PREDS, LABELS) == pytest.approx(7 / 15, abs=1e-12)


def test_matthews_perfect_inverse_and_constant():
    assert matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0, abs=1e-12)
    assert matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0, abs=1e-12)
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 1, 0]) == 0.0  # constant predictions: denominator 0


def test_matthews_multiclass():
    # labels 0,0,1,1,2,2 and preds 0,1,1,1,2,0: correct c = 4, samples s = 6,
    # true counts t = (2, 2, 2), predicted counts p = (2, 3, 1):
    # (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (24 - 12) / sqrt((36 - 14)(36 - 12)) = 12 / sqrt(528)
    assert matthews_corrcoef([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]) == pytest.approx(12 / math.sqrt(528), abs=1e-12)


def test_pearson():
    # x = 1,2,3 and y = 1,3,2: centred (-1,0,1) and (-1,1,0); sum of products 1; norms sqrt(2) each -> 1/2
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5, abs=1e-12)
    assert pearson([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0, abs=1e-12)  # any positive linear map
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0  # constant input: defined as 0 here (scipy gives nan)


def test_spearman_uses_average_ranks_for_ties():
    # x = 1,2,2,3 ranks 1, 2.5, 2.5, 4; y = 1,2,3,4 ranks 1,2,3,4.
    # centred: (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5); products 2.25 + 2.25 = 4.5;
    # norms sqrt(4.5) and sqrt(5) -> 4.5 / sqrt(22.5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9), abs=1e-12)


def test_spearman_ignores_monotone_transforms():
    x = [0.1, 0.5, 0.3, 2.0, 1.0]
    assert spearman(x, [v ** 3 for v in x]) == pytest.approx(1.0, abs=1e-12)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0, abs=1e-12)


def test_glue_metrics_per_task():
    assert set(glue_metrics(TASKS["cola"], PREDS, LABELS)) == {"matthews"}
    assert set(glue_metrics(TASKS["mrpc"], PREDS, LABELS)) == {"accuracy", "f1"}
    assert set(glue_metrics(TASKS["qqp"], PREDS, LABELS)) == {"accuracy", "f1"}
    assert set(glue_metrics(TASKS["stsb"], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])) == {"pearson", "spearman"}
    for name in ["sst2", "mnli", "qnli", "rte"]:
        assert set(glue_metrics(TASKS[name], PREDS, LABELS)) == {"accuracy"}


@pytest.mark.parametrize("name, metrics, expected", [
    ("cola", {"matthews": 7 / 15}, 100 * 7 / 15),
    ("sst2", {"accuracy": 0.75}, 75.0),
    ("mrpc", {"accuracy": 0.75, "f1": 0.8}, 77.5),              # mean of accuracy and F1
    ("stsb", {"pearson": 0.5, "spearman": 0.7}, 60.0),          # mean of Pearson and Spearman
])
def test_main_score(name, metrics, expected):
    assert main_score(TASKS[name], metrics) == pytest.approx(expected, abs=1e-12)


def test_main_score_from_glue_metrics():
    # MRPC example: accuracy 0.75 and F1 0.8 -> 77.5
    assert main_score(TASKS["mrpc"], glue_metrics(TASKS["mrpc"], PREDS, LABELS)) == pytest.approx(77.5, abs=1e-12)
