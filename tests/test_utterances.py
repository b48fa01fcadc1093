"""Pooling a speech segment's windows into one utterance (pure logic: exact, hand-made probabilities)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ser.utterances import SegmentEvidence, UtteranceTracker

LABELS = ("neutral", "happy", "sad", "angry")


def dist(*values: float) -> np.ndarray:
    p = np.asarray(values, dtype=np.float64)
    return p / p.sum()


def test_growing_windows_are_superseded_by_the_window_that_contains_them() -> None:
    ev = SegmentEvidence(4)
    ev.add(0.0, 1.0, dist(1, 1, 1, 7))
    ev.add(0.0, 2.0, dist(1, 7, 1, 1))  # contains the first: only this one counts
    np.testing.assert_allclose(ev.probs(), dist(1, 7, 1, 1))
    assert ev.span_s == 2.0 and ev.start == 0.0 and ev.end == 2.0


def test_sliding_windows_pool_as_a_weighted_geometric_mean() -> None:
    ev = SegmentEvidence(4)
    a, b = dist(4, 2, 1, 1), dist(1, 2, 4, 1)
    ev.add(0.0, 2.0, a)
    ev.add(1.0, 3.0, b)  # adds 1 s after a's end: weights 2 and 1
    expected = np.exp((2 * np.log(a) + np.log(b)) / 3)
    np.testing.assert_allclose(ev.probs(), expected / expected.sum())


def test_memory_keeps_only_recent_windows() -> None:
    ev = SegmentEvidence(4, memory_s=2.5)
    ev.add(0.0, 2.0, dist(1, 9, 1, 1))
    ev.add(1.0, 3.0, dist(1, 9, 1, 1))
    ev.add(2.0, 4.0, dist(1, 1, 9, 1))
    ev.add(3.0, 5.0, dist(1, 1, 9, 1))  # windows that ended by 2.5 s are gone
    assert ev.start == 1.0
    assert int(np.argmax(ev.probs())) == 2
    with pytest.raises(ValueError, match="memory_s"):
        SegmentEvidence(4, memory_s=0.0)


def test_empty_evidence_is_uniform_and_bad_shapes_are_refused() -> None:
    ev = SegmentEvidence(4)
    assert ev.empty and ev.span_s == 0.0
    np.testing.assert_allclose(ev.probs(), np.full(4, 0.25))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ev.add(0.0, 1.0, np.ones(3) / 3)


def test_tracker_returns_each_segment_once_it_is_over() -> None:
    tracker = UtteranceTracker(LABELS)
    assert tracker.push(0, 0.0, 1.0, dist(1, 1, 1, 7)) == []
    assert tracker.push(0, 0.0, 2.0, dist(1, 1, 1, 7)) == []
    done = tracker.push(1, 3.0, 4.0, dist(7, 1, 1, 1))  # a window of the next segment closes segment 0
    assert [(u.segment_id, u.start, u.end, u.label, u.windows) for u in done] == [(0, 0.0, 2.0, "angry", 2)]
    assert done[0].confidence == pytest.approx(0.7)
    last = tracker.close()
    assert [(u.segment_id, u.label, u.windows) for u in last] == [(1, "neutral", 1)]
    assert tracker.close() == []  # nothing open any more
