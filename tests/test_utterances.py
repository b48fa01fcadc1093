"""Pooling a speech segment's windows into one utterance (pure logic: exact, hand-made probabilities)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ser.types import SAMPLE_RATE, AudioBlock, SpeechBoundary
from edge_ser.utterances import SegmentEvidence, UtteranceTracker
from edge_ser.windows import WindowConfig, Windower

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


@pytest.mark.parametrize("length_s", [1.65, 2.05, 3.37])
def test_the_closing_window_over_a_whole_segment_is_its_utterance(length_s: float) -> None:
    """The windower cuts each window's start to a whole number of 20 ms frames, so the closing window of a
    segment that is not a multiple of 20 ms long starts up to 20 ms after the 1 s window the segment began
    with; it still supersedes that window (up to stop 12 the 1 s window kept a weight of 1 s against the
    closing window's remainder)."""
    windower = Windower("s", WindowConfig())
    start = 0.42
    n = round(length_s * SAMPLE_RATE)
    windows = windower.push(SpeechBoundary("s", "start", start, 0))
    for i in range(0, n, 1600):
        windows += windower.push(AudioBlock("s", start + i / SAMPLE_RATE, np.zeros(min(1600, n - i), np.float32)))
    windows += windower.push(SpeechBoundary("s", "end", start + n / SAMPLE_RATE, 0))
    assert windows[0].t0 == start and windows[-1].t0 > start  # the 1 s window and the closing one, cut
    ev = SegmentEvidence(4)
    for k, w in enumerate(windows):
        ev.add(w.t0, w.t1, dist(1, 1, 1, 7) if k < len(windows) - 1 else dist(1, 7, 1, 1))
    np.testing.assert_allclose(ev.probs(), dist(1, 7, 1, 1))


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
