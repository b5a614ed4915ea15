"""Metrics against values worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leukoscope.evaluate.metrics import classification_metrics, curves, evaluation_metrics, label_figure

CLASSES = ["all", "hem"]
# 6 cells; true: all all all hem hem hem; predicted (argmax): all all hem hem hem all
Y = np.array([0, 0, 0, 1, 1, 1])
P_HEM = np.array([0.1, 0.2, 0.6, 0.9, 0.7, 0.4])
PROBS = np.c_[1 - P_HEM, P_HEM]


def test_binary_by_hand() -> None:
    m = classification_metrics(Y, PROBS, CLASSES)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # confusion rows = truth: all -> 2 all, 1 hem; hem -> 1 all, 2 hem
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    for c in CLASSES:
        assert m["per_class"][c] == pytest.approx(
            {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx(2 / 3)
    assert m["f1_weighted"] == pytest.approx(2 / 3)
    # AUC: hem scores {0.9, 0.7, 0.4} vs all scores {0.1, 0.2, 0.6}: 8 of 9 pairs ordered
    assert m["roc_auc"] == pytest.approx(8 / 9)
    # confidences 0.9 0.8 0.6 0.9 0.7 0.6; correct 1 1 0 1 1 0; 15 bins:
    # bin (0.8667,0.9333]: conf .9,.9 acc 1 -> gap .1*2/6; (0.7333,0.8]: .8 acc 1 -> .2/6;
    # (0.6667,0.7333]: .7 acc 1 -> .3/6; (0.5333,0.6]: .6,.6 acc 0 -> .6*2/6
    assert m["ece"] == pytest.approx((0.2 + 0.2 + 0.3 + 1.2) / 6)
    json.dumps(m)


def test_unbalanced_weighted_and_macro() -> None:
    y = np.array([0, 0, 0, 0, 1])
    pred = np.array([0, 0, 0, 1, 1])
    probs = np.eye(2)[pred]
    m = classification_metrics(y, probs, CLASSES)
    # all: P 3/3 R 3/4 F1 6/7; hem: P 1/2 R 1 F1 2/3
    assert m["per_class"]["all"]["f1"] == pytest.approx(6 / 7)
    assert m["per_class"]["hem"]["f1"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert m["f1_weighted"] == pytest.approx((4 * 6 / 7 + 2 / 3) / 5)
    assert m["precision_macro"] == pytest.approx(0.75)
    assert m["recall_weighted"] == pytest.approx(0.8)  # weighted recall == accuracy
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1) / 2)


def test_multiclass_ovr_auc_and_absent_class() -> None:
    classes = ["a", "b", "c"]
    y = np.array([0, 1, 2, 0])
    probs = np.array([[.7, .2, .1], [.2, .5, .3], [.3, .3, .4], [.2, .6, .2]])
    m = classification_metrics(y, probs, classes)
    # a: pos {.7,.2} vs neg {.2,.3}: pairs .7>.2 .7>.3 .2=.2(.5) .2<.3 -> 2.5/4
    # b: pos {.5} vs neg {.2,.3,.6}: 2/3 ; c: pos {.4} vs neg {.1,.3,.2}: 1
    assert m["roc_auc"] == pytest.approx((2.5 / 4 + 2 / 3 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    one = classification_metrics(np.array([0, 0]), probs[:2], classes)
    assert one["roc_auc"] is None  # undefined with one class present
    assert one["per_class"]["c"]["support"] == 0
    assert classification_metrics(np.array([], int), np.zeros((0, 3)), classes)["accuracy"] is None


def test_subject_level_mean_probability() -> None:
    # subject A (all): cells 0.1 0.2 0.6 -> mean p_hem .3 -> all (correct)
    # subject B (hem): cells 0.9 0.7 0.4 -> mean p_hem 2/3 -> hem (correct)
    subjects = ["A", "A", "A", "B", "B", "B"]
    out = evaluation_metrics(Y, PROBS, CLASSES, subjects)
    assert out["cell"]["accuracy"] == pytest.approx(4 / 6)
    assert out["subject"]["n"] == 2
    assert out["subject"]["accuracy"] == 1.0
    rows = {r["subject"]: r for r in out["subjects"]}
    assert rows["A"]["p_hem"] == pytest.approx(0.3)
    assert rows["B"]["p_hem"] == pytest.approx(2 / 3)
    assert rows["A"]["cell_accuracy"] == pytest.approx(2 / 3) and rows["B"]["cells"] == 3
    json.dumps(out)
    # no subject ids: no subject section
    assert "subject" not in evaluation_metrics(Y, PROBS, CLASSES, [None] * 6)


def test_curves_match_auc() -> None:
    c = curves(Y, PROBS, CLASSES)
    assert c["hem"]["auc"] == pytest.approx(8 / 9)
    assert c["all"]["auc"] == pytest.approx(8 / 9)
    assert c["hem"]["recall"][0] == 1.0


def test_averages_cover_the_classes_present() -> None:
    """A set holding 2 of 4 classes: an absent class is named, not averaged in as an F1 of 0."""
    classes = ["a", "b", "c", "d"]
    y = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 2])  # an a called b, a b called c (a class absent from y)
    m = classification_metrics(y, np.eye(4)[pred], classes)
    # a: P 2/2 R 2/3 F1 .8; b: P 1/2 R 1/2 F1 .5
    assert m["absent_classes"] == ["c", "d"]
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5) / 2)  # was (0.8 + 0.5) / 4
    assert m["precision_macro"] == pytest.approx((1 + 0.5) / 2)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5) / 5)
    assert m["accuracy"] == pytest.approx(3 / 5)  # the call into c still counts against it
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert classification_metrics(Y, PROBS, CLASSES)["absent_classes"] == []
    for figure in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"):  # what the intervals resample
        assert label_figure(y, pred, 4, figure) == pytest.approx(m[figure]), figure
