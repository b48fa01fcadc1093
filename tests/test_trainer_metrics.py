"""UA, macro-F1, WA, ECE and the label protocols against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ser.types import EMOTIONS
from trainer.metrics import (
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    mean_over_corpora,
    protocol_probs,
    score,
    truth_index,
    unweighted_accuracy,
    weighted_accuracy,
)


def test_confusion_ua_wa_f1_by_hand() -> None:
    # true: 0 0 0 0 1 1 2 ; pred: 0 0 0 1 1 0 2
    y_true = np.array([0, 0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # recalls 3/4, 1/2, 1 over the 3 classes present; class 3 absent is ignored
    assert unweighted_accuracy(cm) == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert weighted_accuracy(cm) == pytest.approx(5 / 7)
    # F1: class0 p=3/4 r=3/4 -> 0.75; class1 p=1/2 r=1/2 -> 0.5; class2 -> 1
    assert macro_f1(cm) == pytest.approx((0.75 + 0.5 + 1.0) / 3)


def test_ece_by_hand() -> None:
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # bin 9 (0.95): acc 0.5, conf 0.95 -> 0.45 * 2/4; bin 6 (0.6): acc 1, conf .6 -> .4/4; bin 7 (.7): acc 1 -> .3/4
    expected = 0.5 * 0.45 + 0.25 * 0.4 + 0.25 * 0.3
    assert expected_calibration_error(probs, y) == pytest.approx(expected)


def test_truth_index_protocols_and_calm() -> None:
    assert truth_index("angry", "4class") == 3
    assert truth_index("surprised", "4class") is None
    assert truth_index("surprised", "5class") == 4
    assert truth_index("calm", "4class") is None
    assert truth_index("calm", "4class", calm_as_neutral=True) == 0
    assert truth_index("fearful", "arousal") == 1
    assert truth_index("neutral", "arousal") == 0
    assert truth_index("other", "8class") == 7


def test_protocol_probs_is_the_argmax_over_the_subset() -> None:
    logits = np.zeros((1, 8))
    logits[0, EMOTIONS.index("fearful")] = 9.0  # outside the 4 classes: must not matter
    logits[0, EMOTIONS.index("sad")] = 2.0
    probs = protocol_probs(logits, EMOTIONS, "4class")
    assert probs.shape == (1, 4)
    assert probs.sum() == pytest.approx(1.0)
    assert int(probs.argmax()) == 2
    arousal = protocol_probs(logits, EMOTIONS, "arousal")
    assert arousal[0, 1] > 0.99


def test_score_per_corpus_and_equal_weight_mean() -> None:
    eye = np.eye(8) * 5.0
    n, h, s, a = (EMOTIONS.index(x) for x in ("neutral", "happy", "sad", "angry"))
    logits = np.stack([eye[n], eye[h], eye[s], eye[n], eye[a], eye[a]])
    emotions = ["neutral", "happy", "sad", "angry", "angry", "surprised"]
    corpora = ["x", "x", "x", "x", "y", "y"]
    reports = score(logits, emotions, corpora, EMOTIONS, "4class")
    assert set(reports) == {"x", "y"}
    assert reports["x"]["n"] == 4 and reports["y"]["n"] == 1  # surprised is not scored in 4-class
    assert reports["x"]["ua"] == pytest.approx(0.75)
    assert reports["y"]["ua"] == pytest.approx(1.0)
    assert reports["x"]["labels"] == ["neutral", "happy", "sad", "angry"]
    assert mean_over_corpora(reports)["ua"] == pytest.approx(0.875)
