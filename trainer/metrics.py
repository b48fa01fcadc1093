"""Evaluation metrics and label protocols of EVAL.md: UA, macro-F1, WA, ECE, confusion matrices.

A protocol picks which clips are scored and over which classes the prediction is made:

* ``4class``: neutral, happy, sad, angry (argmax over those four model outputs);
* ``5class``: the four plus surprised;
* ``8class``: the model's own classes;
* ``arousal``: neutral vs emotional (P(neutral) against the rest).

``calm`` counts as neutral only with ``calm_as_neutral``; clips whose label is outside the protocol are
not scored. UA and macro-F1 average over the classes that occur in the ground truth of that corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_ser.types import EMOTIONS

PROTOCOLS: dict[str, tuple[str, ...]] = {
    "4class": ("neutral", "happy", "sad", "angry"),
    "5class": ("neutral", "happy", "sad", "angry", "surprised"),
    "8class": EMOTIONS,
    "arousal": ("neutral", "emotional"),
}


def protocol_labels(protocol: str) -> tuple[str, ...]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def truth_index(emotion: str, protocol: str, calm_as_neutral: bool = False) -> int | None:
    """Index of a harmonized label in the protocol's classes, or None when the clip is not scored."""
    labels = protocol_labels(protocol)
    if emotion == "calm":
        if not calm_as_neutral:
            return None
        emotion = "neutral"
    if protocol == "arousal":
        if emotion == "neutral":
            return 0
        return 1 if emotion in EMOTIONS else None
    return labels.index(emotion) if emotion in labels else None


def protocol_probs(logits: np.ndarray, classes: Sequence[str], protocol: str) -> np.ndarray:
    """Model logits (N, len(classes)) -> probabilities (N, n_protocol) over the protocol's classes.

    For class-subset protocols, a softmax over those classes' logits (the argmax over the subset);
    for ``arousal``, [P(neutral), 1 - P(neutral)] from the full softmax.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if protocol == "arousal":
        p = _softmax(logits)
        p_neutral = p[:, list(classes).index("neutral")]
        return np.stack([p_neutral, 1.0 - p_neutral], axis=1)
    labels = protocol_labels(protocol)
    missing = [c for c in labels if c not in classes]
    if missing:
        raise ValueError(f"protocol {protocol} needs classes {missing} that the model does not output {classes}")
    return _softmax(logits[:, [list(classes).index(c) for c in labels]])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def unweighted_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes present in the ground truth (balanced accuracy)."""
    support = confusion.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(confusion)[present] / support[present]))


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over the classes present in the ground truth."""
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    tp = np.diag(confusion).astype(np.float64)
    present = support > 0
    if not present.any():
        return float("nan")
    denom = support + predicted
    f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)
    return float(np.mean(f1[present]))


def weighted_accuracy(confusion: np.ndarray) -> float:
    """Plain accuracy (equals micro-F1 for single-label prediction)."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width confidence bins: sum_b |B|/N * |acc(B) - conf(B)|."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def corpus_report(probs: np.ndarray, y_true: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """EVAL.md's per-corpus entry from protocol probabilities (N, n_labels) and true indices (N,)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    confusion = confusion_matrix(y_true, np.asarray(probs).argmax(axis=1), len(labels))
    return {
        "n": len(y_true),
        "ua": unweighted_accuracy(confusion),
        "macro_f1": macro_f1(confusion),
        "wa": weighted_accuracy(confusion),
        "ece": expected_calibration_error(probs, y_true),
        "confusion": confusion.tolist(),
        "labels": list(labels),
    }


def score(logits: np.ndarray, emotions: Sequence[str], corpora: Sequence[str], classes: Sequence[str],
          protocol: str = "4class", calm_as_neutral: bool = False) -> dict[str, dict[str, Any]]:
    """Per-corpus reports for clip logits (N, len(classes)) with harmonized labels and corpus names."""
    labels = protocol_labels(protocol)
    truth = [truth_index(e, protocol, calm_as_neutral) for e in emotions]
    keep = np.array([t is not None for t in truth], dtype=bool)
    reports: dict[str, dict[str, Any]] = {}
    if not keep.any():
        return reports
    probs = protocol_probs(np.asarray(logits)[keep], classes, protocol)
    y = np.array([t for t in truth if t is not None], dtype=np.int64)
    names = np.asarray(corpora, dtype=object)[keep]
    for corpus in sorted(set(names.tolist())):
        members = names == corpus
        reports[corpus] = corpus_report(probs[members], y[members], labels)
    return reports


def mean_over_corpora(reports: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Equal-weight mean of UA, macro-F1 and WA over corpora."""
    keys = ("ua", "macro_f1", "wa")
    if not reports:
        return {k: float("nan") for k in keys}
    return {k: float(np.mean([r[k] for r in reports.values()])) for k in keys}
