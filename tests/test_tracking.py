"""Tracking metrics on hand-built streams: perfect, late, spurious and missed shifts; per-second UA."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_ser.events import EventBuilder
from edge_ser.smoothing import Shift, StateUpdate
from trainer.tracking import (
    ReportedShift,
    StreamTruth,
    aggregate,
    from_payloads,
    load_truth,
    match_shifts,
    score_stream,
    steady_seconds,
)

TRUTH = StreamTruth.from_dict(
    {
        "intervals": [
            {"start": 0.0, "end": 4.0, "label": "happy"},
            {"start": 4.5, "end": 8.0, "label": "sad"},
            {"start": 8.5, "end": 12.0, "label": "angry"},
        ],
        "boundaries": [4.5, 8.5],
    }
)


def perfect_states(truth: StreamTruth = TRUTH) -> list[tuple[float, str]]:
    """A state at the end of every second, carrying the truth at that second's midpoint."""
    out = []
    for k in range(int(truth.duration_s)):
        label = truth.label_at(k + 0.5)
        out.append((k + 1.0, label or "uncertain"))
    return out


def test_perfect_tracking() -> None:
    r = score_stream(TRUTH, [4.5, 8.5], perfect_states())
    assert (r.ua, r.wa) == (1.0, 1.0)
    assert (r.precision, r.recall, r.f1) == (1.0, 1.0, 1.0)
    assert r.median_delay_s == 0.0
    assert r.n_spurious == 0 and r.spurious_per_min == 0.0
    # 12 seconds; second 4 (midpoint 4.5) is sad, none falls in a gap here.
    assert r.n_seconds == 12
    assert r.class_total == {"happy": 4, "sad": 4, "angry": 4}


def test_late_shifts_within_tolerance_match_and_give_the_delay() -> None:
    r = score_stream(TRUTH, [5.3, 9.5], perfect_states())
    assert r.n_matched == 2 and r.f1 == 1.0
    assert r.median_delay_s == pytest.approx(0.9)
    too_late = score_stream(TRUTH, [6.0, 10.0], perfect_states())
    assert too_late.n_matched == 0 and too_late.recall == 0.0 and too_late.f1 == 0.0
    assert too_late.n_spurious == 2


def test_onset_places_the_shift_and_t_gives_the_delay() -> None:
    shifts = [ReportedShift(t=7.0, onset=4.7), ReportedShift(t=11.0, onset=8.3)]
    r = score_stream(TRUTH, shifts, perfect_states())
    assert r.n_matched == 2
    assert r.median_delay_s == pytest.approx(2.5)
    assert r.median_onset_error_s == pytest.approx(0.0)  # +0.2 and -0.2


def test_spurious_shift_in_steady_emotion() -> None:
    r = score_stream(TRUTH, [2.0, 4.5, 8.5], perfect_states())
    assert r.n_matched == 2 and r.precision == pytest.approx(2 / 3) and r.recall == 1.0
    # Steady truth: [0, 3.5] + [5.5, 7.5] + [9.5, 12] = 8 s.
    assert steady_seconds(TRUTH, 1.0) == pytest.approx(8.0)
    assert r.n_spurious == 1 and r.n_unmatched == 1
    assert r.spurious_per_min == pytest.approx(1 / (8 / 60))


def test_only_unmatched_shifts_in_steady_emotion_are_spurious() -> None:
    """A second shift next to a boundary costs precision; only flicker in steady emotion is 'spurious'."""
    r = score_stream(TRUTH, [4.5, 5.2, 8.5, 10.0], perfect_states())
    assert r.n_matched == 2 and r.n_unmatched == 2
    assert r.n_spurious == 1  # 10.0 lies in steady angry; 5.2 is within 1 s of the boundary at 4.5
    assert r.unmatched_per_min == pytest.approx(2 / (8 / 60))
    assert r.spurious_per_min == pytest.approx(1 / (8 / 60))


def test_missed_shifts() -> None:
    r = score_stream(TRUTH, [], perfect_states())
    assert r.recall == 0.0
    assert r.precision is None and r.f1 is None and r.median_delay_s is None
    assert r.spurious_per_min == 0.0


def test_each_boundary_matches_once_closest_first() -> None:
    assert match_shifts([4.0, 4.6, 5.2], [4.5]) == [(1, 0)]
    # A shift between two boundaries goes to the closer one; the other boundary takes the next shift.
    assert sorted(match_shifts([5.0, 5.9], [4.5, 5.5])) == [(0, 0), (1, 1)]


def test_per_second_labels_use_the_latest_state_and_skip_gaps() -> None:
    truth = StreamTruth.from_dict(
        {
            "intervals": [
                {"start": 0.0, "end": 3.0, "label": "happy"},
                {"start": 4.0, "end": 6.0, "label": "sad"},
                {"start": 6.0, "end": 7.0, "label": "fearful"},  # outside the 4 scored classes
            ],
            "boundaries": [4.0, 6.0],
        }
    )
    # No state for second 0; seconds 1-2 happy; second 3 is noise; seconds 4-5 sad then wrong.
    states = [(2.0, "happy"), (3.0, "happy"), (5.0, "sad"), (6.0, "uncertain")]
    r = score_stream(truth, [], states)
    assert r.class_total == {"happy": 3, "sad": 2}
    assert r.class_correct == {"happy": 2, "sad": 1}
    assert r.ua == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r.wa == pytest.approx(3 / 5)


def test_utterance_labels_score_each_second_by_the_covering_or_nearest_utterance() -> None:
    utterances = [(0.3, 3.8, "happy"), (4.7, 7.9, "sad"), (8.6, 10.0, "happy")]  # the last one is wrong
    r = score_stream(TRUTH, [4.5, 8.5], [], utterances=utterances)
    # seconds 0-3 happy (0.5 is nearest to the first utterance), 4-7 sad (4.5 is nearest to the second),
    # 8-11 angry, answered by the wrong third utterance (covering 8.5 and 9.5, nearest to 10.5 and 11.5)
    assert r.final_total == {"happy": 4, "sad": 4, "angry": 4}  # the truth at each second's midpoint
    assert r.final_correct == {"happy": 4, "sad": 4, "angry": 0}
    assert r.ua_final == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert r.ua == pytest.approx(0.0)  # no live state at all
    none = score_stream(TRUTH, [], perfect_states())
    assert none.ua_final is None


def test_aggregate_sums_counts_and_pools_delays() -> None:
    a = score_stream(TRUTH, [5.0, 8.5], perfect_states())
    b = score_stream(TRUTH, [2.0, 5.5], perfect_states())
    total = aggregate([a, b])
    assert total.n_streams == 2
    assert (total.n_true, total.n_reported, total.n_matched) == (4, 4, 3)
    assert sorted(total.delays) == pytest.approx([0.0, 0.5, 1.0])
    assert total.median_delay_s == pytest.approx(0.5)
    assert total.n_spurious == 1
    assert total.steady_s == pytest.approx(16.0)
    assert total.class_total == {"happy": 8, "sad": 8, "angry": 8}
    d = total.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["f1"] == pytest.approx(0.75)
    assert aggregate([]).n_streams == 0


def test_from_event_payloads(tmp_path) -> None:
    labels = ("neutral", "happy", "sad", "angry")
    b = EventBuilder("dev", "s", "m", "run", labels=labels)
    p_happy = np.array([0.1, 0.7, 0.1, 0.1])
    payloads = [
        b.state(StateUpdate(1.0, p_happy, "happy", 0.7), 0.0),
        b.shift(Shift(5.4, "happy", "sad", 0.6, onset=4.6), 0.0),
        b.shift(Shift(6.0, "sad", "uncertain", 0.4), 0.0),  # not an emotion shift
        b.state(StateUpdate(6.0, np.array([0.3, 0.2, 0.35, 0.15]), "uncertain", 0.35), 0.0),
    ]
    shifts, states = from_payloads(payloads, labels)
    assert shifts == [ReportedShift(t=5.4, onset=4.6)]
    assert states == [(1.0, "happy"), (6.0, "uncertain")]
    path = tmp_path / "truth.json"
    path.write_text(json.dumps({"intervals": [{"start": 0, "end": 2, "label": "happy"}], "boundaries": []}))
    assert load_truth(path).duration_s == 2.0
    with pytest.raises(ValueError, match="intervals"):
        StreamTruth.from_dict({"boundaries": []}, source="bad.json")
