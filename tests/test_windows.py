"""Windower timing and length arithmetic (pure logic: synthetic ramps stand in for speech)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_ser.types import AudioBlock, SpeechBoundary, Window
from edge_ser.windows import WindowConfig, Windower

SR = 16000
SLIDING = WindowConfig(grow=False, whole_max_s=None)  # the sliding grid alone (the default also grows windows at a
# segment start and ends a long segment with one window over all of it)


def segment(w: Windower, n: int, t0: float = 10.0, block: int = 1600, seg_id: int = 0,
            end: bool = True) -> tuple[list[Window], np.ndarray]:
    """Feed one segment of ``n`` ramp samples starting at ``t0``; return the windows and the samples."""
    ramp = np.arange(n, dtype=np.float32) / SR
    out = w.push(SpeechBoundary(w.stream_id, "start", t0, seg_id))
    for i in range(0, n, block):
        out += w.push(AudioBlock(w.stream_id, t0 + i / SR, ramp[i:i + block]))
    if end:
        out += w.push(SpeechBoundary(w.stream_id, "end", t0 + n / SR, seg_id))
    return out, ramp


def spans(windows: list[Window], t0: float = 10.0) -> list[tuple[float, float]]:
    return [(round(x.t0 - t0, 4), round(x.t1 - t0, 4)) for x in windows]


def check_samples(windows: list[Window], ramp: np.ndarray, t0: float = 10.0) -> None:
    for win in windows:
        start = round((win.t0 - t0) * SR)
        assert win.samples.dtype == np.float32
        assert win.samples.size % 320 == 0
        assert win.samples.size == round((win.t1 - win.t0) * SR)
        np.testing.assert_array_equal(win.samples, ramp[start:start + win.samples.size])


def test_sliding_windows_and_the_tail() -> None:
    wins, ramp = segment(Windower("s", SLIDING), round(3.5 * SR))
    # full windows on the 1 s hop grid, then the tail from the next hop position to the end
    assert spans(wins) == [(0.0, 2.0), (1.0, 3.0), (2.0, 3.5)]
    assert {w.segment_id for w in wins} == {0}
    check_samples(wins, ramp)


def test_exact_window_has_no_tail() -> None:
    wins, _ = segment(Windower("s", SLIDING), 2 * SR)
    assert spans(wins) == [(0.0, 2.0)]


def test_tail_is_trimmed_at_its_start_to_20ms() -> None:
    wins, ramp = segment(Windower("s", SLIDING), 2 * SR + 100)
    assert spans(wins)[0] == (0.0, 2.0)
    tail = wins[1]
    assert tail.samples.size == 16000  # 1.00625 s from the next hop position, trimmed to 1.0 s
    assert tail.t1 == pytest.approx(10.0 + (2 * SR + 100) / SR)
    check_samples(wins, ramp)


def test_short_segment_gives_one_window_of_its_own_length() -> None:
    n = round(1.23 * SR)
    wins, ramp = segment(Windower("s", SLIDING), n)
    assert len(wins) == 1
    assert wins[0].samples.size == n // 320 * 320 and wins[0].t1 == pytest.approx(10.0 + n / SR)
    check_samples(wins, ramp)


def test_too_short_segment_gives_nothing() -> None:
    assert segment(Windower("s", SLIDING), round(0.49 * SR))[0] == []
    assert len(segment(Windower("s", SLIDING), round(0.5 * SR))[0]) == 1


def test_window_length_is_rounded_down_to_20ms_and_never_padded() -> None:
    w = Windower("s", WindowConfig(window_s=1.99, hop_s=0.5, min_window_s=0.3, whole_max_s=None))
    assert w.window_samples == 31680  # 1.99 s = 99.5 * 20 ms -> 99 * 20 ms
    wins, ramp = segment(w, 40 * SR, block=4321)
    assert max(x.samples.size for x in wins) == 31680
    check_samples(wins, ramp)


def test_windows_appear_as_soon_as_their_audio_is_in() -> None:
    w = Windower("s", SLIDING)
    wins, _ = segment(w, round(2.05 * SR), end=False)
    assert spans(wins) == [(0.0, 2.0)]
    assert w.flush() and w.flush() == []


def test_a_new_start_closes_the_open_segment_and_reset_forgets_it() -> None:
    w = Windower("s", SLIDING)
    first, _ = segment(w, round(1.5 * SR), end=False)
    assert first == []
    second, _ = segment(w, round(0.8 * SR), t0=20.0, seg_id=1)
    assert [(x.segment_id, x.samples.size) for x in second] == [(0, 24000), (1, 12800)]
    segment(w, round(1.5 * SR), end=False)
    w.reset()
    assert w.flush() == []


def test_protocol_errors() -> None:
    w = Windower("s", WindowConfig())
    with pytest.raises(ValueError, match="outside a speech segment"):
        w.push(AudioBlock("s", 0.0, np.zeros(320, dtype=np.float32)))
    with pytest.raises(ValueError, match="stream 'x'"):
        w.push(SpeechBoundary("x", "start", 0.0, 0))
    with pytest.raises(ValueError, match="'middle'"):
        w.push(SpeechBoundary("s", "middle", 0.0, 0))


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="hop_s"):
        WindowConfig(window_s=1.0, hop_s=2.0)
    with pytest.raises(ValidationError, match="min_window_s"):
        WindowConfig(window_s=1.0, min_window_s=1.5)
    with pytest.raises(ValidationError, match="window_s"):
        WindowConfig(window_s=31.0)
    with pytest.raises(ValidationError, match="extra"):
        WindowConfig(pad=True)  # type: ignore[call-arg]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 8 * SR), block=st.integers(1, 5000), window_s=st.sampled_from([0.5, 1.0, 2.0, 2.51]),
       hop_frac=st.sampled_from([0.25, 0.5, 1.0]))
@example(n=84960, block=1, window_s=2.51, hop_frac=1.0)  # a 2.51 s window quantizes to 2.50 s: the hop must follow
def test_arithmetic_properties(n: int, block: int, window_s: float, hop_frac: float) -> None:
    config = WindowConfig(window_s=window_s, hop_s=window_s * hop_frac, min_window_s=0.3, grow=False,
                          whole_max_s=None)
    w = Windower("s", config)
    wins, ramp = segment(w, n, block=block)
    check_samples(wins, ramp)
    full = [x for x in wins if x.samples.size == w.window_samples]
    assert all(x.samples.size <= w.window_samples for x in wins)
    expected_full = 0 if n < w.window_samples else (n - w.window_samples) // w.hop_samples + 1
    assert len(full) >= expected_full and len(wins) <= expected_full + 1
    if n >= w.min_samples:
        # the end of speech is scored unless the uncovered rest is shorter than a minimum window
        covered_to = max(round((x.t1 - 10.0) * SR) for x in wins)
        assert covered_to == n or n - covered_to < w.min_samples
    else:
        assert wins == []


def test_growing_windows_start_each_segment() -> None:
    """The default grows a window from the segment start every hop until the first full window."""
    wins, ramp = segment(Windower("s", WindowConfig(whole_max_s=None)), round(3.5 * SR))
    assert spans(wins) == [(0.0, 1.0), (0.0, 2.0), (1.0, 3.0), (2.0, 3.5)]
    check_samples(wins, ramp)
    wins, ramp = segment(Windower("s", WindowConfig(window_s=2.0, hop_s=0.5, whole_max_s=None)), round(2.7 * SR))
    assert spans(wins) == [(0.0, 0.5), (0.0, 1.0), (0.0, 1.5), (0.0, 2.0), (0.5, 2.5), (1.0, 2.7)]
    check_samples(wins, ramp)


def test_growing_window_is_emitted_as_its_audio_arrives_and_not_repeated_at_the_end() -> None:
    w = Windower("s", WindowConfig())
    wins, _ = segment(w, SR, end=False)  # exactly 1 s: the first growing window, nothing left for a tail
    assert spans(wins) == [(0.0, 1.0)]
    assert w.flush() == []
    wins, _ = segment(Windower("s", WindowConfig()), round(1.4 * SR))  # then the whole segment as its tail
    assert spans(wins) == [(0.0, 1.0), (0.0, 1.4)]
    short, _ = segment(Windower("s", WindowConfig()), round(0.8 * SR))  # shorter than one hop: the tail alone
    assert spans(short) == [(0.0, 0.8)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 6 * SR), block=st.integers(1, 5000), window_s=st.sampled_from([1.0, 2.0, 2.51]),
       hop_frac=st.sampled_from([0.25, 0.5, 1.0]))
def test_growing_arithmetic_properties(n: int, block: int, window_s: float, hop_frac: float) -> None:
    w = Windower("s", WindowConfig(window_s=window_s, hop_s=window_s * hop_frac, min_window_s=0.3, whole_max_s=None))
    wins, ramp = segment(w, n, block=block)
    check_samples(wins, ramp)
    assert [x.t1 for x in wins] == sorted(x.t1 for x in wins)  # in order of their end
    growing = [x for x in wins if x.t0 == 10.0 and x.samples.size < w.window_samples]
    assert len(growing) <= round(1 / hop_frac)  # at most one per hop before the first full window, + the tail
    sliding = Windower("s", WindowConfig(window_s=window_s, hop_s=window_s * hop_frac, min_window_s=0.3,
                                         grow=False, whole_max_s=None))
    plain, _ = segment(sliding, n, block=block)
    assert {(x.t0, x.t1) for x in plain} - {(x.t0, x.t1) for x in wins} <= {(x.t0, x.t1) for x in plain[-1:]}


def test_long_segment_ends_with_one_whole_window_when_asked() -> None:
    config = WindowConfig(whole_max_s=8.0)
    wins, ramp = segment(Windower("s", config), round(3.5 * SR))
    # growing, sliding, then the whole 3.5 s instead of the 2-3.5 s tail
    assert spans(wins) == [(0.0, 1.0), (0.0, 2.0), (1.0, 3.0), (0.0, 3.5)]
    check_samples(wins, ramp)
    wins, ramp = segment(Windower("s", config), round(10.3 * SR), block=777)  # longer: its last 8 s
    assert spans(wins)[-1] == (2.3, 10.3)
    check_samples(wins, ramp)
    short, _ = segment(Windower("s", config), round(1.5 * SR))  # one window covered it: the usual tail
    assert spans(short) == [(0.0, 1.0), (0.0, 1.5)]
