"""Temporal smoothers on tiny synthetic probability sequences (pure logic: exact, no audio, no model)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from pydantic import ValidationError

from edge_ser.smoothing import (
    UNCERTAIN,
    EmaSmoother,
    EmaSmootherConfig,
    HmmSmoother,
    HmmSmootherConfig,
    MedianSmoother,
    MedianSmootherConfig,
    Shift,
    StateUpdate,
    make_smoother,
    parse_smoother_config,
)
from edge_ser.types import EMOTIONS

WINDOW_S = 2.0
HOP_S = 0.5

CONFIGS = {
    "ema": EmaSmootherConfig(),
    "hmm": HmmSmootherConfig(),
    "median": MedianSmootherConfig(),
}


def probs(labels: tuple[str, ...] = EMOTIONS, **mass: float) -> np.ndarray:
    """A distribution with the given mass on named labels and the rest spread evenly."""
    p = np.zeros(len(labels))
    for label, m in mass.items():
        p[labels.index(label)] = m
    rest = 1.0 - p.sum()
    free = p == 0
    p[free] = rest / free.sum()
    return p


def run(smoother, windows, end: float | None = None) -> list[StateUpdate | Shift]:
    out: list[StateUpdate | Shift] = []
    for t0, t1, p in windows:
        out += smoother.push(t0, t1, p)
    if end is not None:
        out += smoother.flush(end)
    return out


def sliding(start: float, stop: float, fn) -> list[tuple[float, float, np.ndarray]]:
    """Windows of WINDOW_S every HOP_S whose end runs from ``start`` to ``stop``; ``fn(t1)`` gives probs."""
    n = round((stop - start) / HOP_S) + 1
    return [(t1 - WINDOW_S, t1, fn(t1)) for t1 in (start + i * HOP_S for i in range(n))]


def shifts(out) -> list[Shift]:
    return [x for x in out if isinstance(x, Shift)]


def states(out) -> list[StateUpdate]:
    return [x for x in out if isinstance(x, StateUpdate)]


def step_stream(change_at: float = 10.0, stop: float = 20.0):
    return sliding(2.0, stop, lambda t1: probs(happy=0.8) if t1 <= change_at else probs(sad=0.8))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_clean_step_gives_one_shift_with_bounded_delay(kind: str) -> None:
    config = CONFIGS[kind]
    out = run(make_smoother(config, EMOTIONS), step_stream(), end=20.0)
    found = shifts(out)
    assert [(s.from_label, s.to_label) for s in found] == [("happy", "sad")]
    shift = found[0]
    # Decided after the change, within the dwell plus one window length plus the HMM's lag.
    lag = config.lag_s if isinstance(config, HmmSmootherConfig) else 0.0
    assert 10.0 < shift.t <= 10.0 + config.min_dwell_s + WINDOW_S + lag
    assert shift.onset is not None and abs(shift.onset - 10.0) <= 1.0
    assert shift.confidence > 0.5
    assert states(out)[-1].dominant == "sad"


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_noisy_alternating_probabilities_do_not_flicker(kind: str) -> None:
    def noisy(t1: float) -> np.ndarray:
        if t1 <= 5.0:
            return probs(happy=0.8)
        leaning = "happy" if round(t1 / HOP_S) % 2 else "sad"
        other = "sad" if leaning == "happy" else "happy"
        return probs(**{leaning: 0.55, other: 0.3})

    windows = sliding(2.0, 30.0, noisy)
    raw = [EMOTIONS[int(np.argmax(p))] for _, _, p in windows]
    assert sum(a != b for a, b in itertools.pairwise(raw)) > 20  # the input does flicker
    out = run(make_smoother(CONFIGS[kind], EMOTIONS), windows, end=30.0)
    assert shifts(out) == []


def test_without_hysteresis_or_dwell_the_same_input_flickers() -> None:
    bare = EmaSmootherConfig(tau_s=0.1, margin=0.0, min_dwell_s=0.0, min_gap=0.0, min_confidence=0.0)

    def noisy(t1: float) -> np.ndarray:
        return probs(happy=0.55, sad=0.3) if round(t1 / HOP_S) % 2 else probs(sad=0.55, happy=0.3)

    out = run(make_smoother(bare, EMOTIONS), sliding(2.0, 12.0, noisy))
    assert len(shifts(out)) > 10


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_tie_between_two_classes_is_uncertain(kind: str) -> None:
    tie = sliding(2.0, 10.0, lambda t1: probs(happy=0.45, sad=0.45))
    out = run(make_smoother(CONFIGS[kind], EMOTIONS), tie, end=10.0)
    assert states(out) and all(s.dominant == UNCERTAIN for s in states(out))
    assert shifts(out) == []
    last = states(out)[-1]
    assert last.confidence == pytest.approx(float(last.probs.max()), abs=1e-6)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_clear_label_followed_by_a_tie_becomes_uncertain(kind: str) -> None:
    windows = sliding(2.0, 6.0, lambda t1: probs(happy=0.8)) + sliding(
        6.5, 22.0, lambda t1: probs(happy=0.45, sad=0.45)
    )
    out = run(make_smoother(CONFIGS[kind], EMOTIONS), windows, end=22.0)
    assert states(out)[4].dominant == "happy"
    assert states(out)[-1].dominant == UNCERTAIN  # the HMM's memory takes longer, but it gets there
    assert shifts(out) == []  # to "uncertain" is not an emotion shift by default


def test_report_uncertain_reports_both_transitions() -> None:
    config = EmaSmootherConfig(report_uncertain=True)
    windows = (
        sliding(2.0, 6.0, lambda t1: probs(happy=0.8))
        + sliding(6.5, 12.0, lambda t1: probs(happy=0.45, sad=0.45))
        + sliding(12.5, 18.0, lambda t1: probs(sad=0.8))
    )
    out = run(make_smoother(config, EMOTIONS), windows, end=18.0)
    assert [(s.from_label, s.to_label) for s in shifts(out)] == [("happy", UNCERTAIN), (UNCERTAIN, "sad")]


def test_shift_goes_from_the_last_certain_label_across_uncertain() -> None:
    def through_tie(final: str):
        return (
            sliding(2.0, 6.0, lambda t1: probs(happy=0.8))
            + sliding(6.5, 12.0, lambda t1: probs(happy=0.45, sad=0.45))
            + sliding(12.5, 18.0, lambda t1: probs(**{final: 0.8}))
        )

    back = run(make_smoother(EmaSmootherConfig(), EMOTIONS), through_tie("happy"), end=18.0)
    assert shifts(back) == []  # happy -> uncertain -> happy is no shift
    onward = run(make_smoother(EmaSmootherConfig(), EMOTIONS), through_tie("sad"), end=18.0)
    assert [(s.from_label, s.to_label) for s in shifts(onward)] == [("happy", "sad")]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_states_land_on_the_grid_once_per_interval(kind: str) -> None:
    # An irregular hop (0.3 s) must not change the 1 s grid.
    windows = [(t1 - WINDOW_S, t1, probs(happy=0.7)) for t1 in np.arange(2.0, 12.01, 0.3)]
    out = run(make_smoother(CONFIGS[kind], EMOTIONS), windows)
    times = [s.t for s in states(out)]
    assert times, "no states"
    assert all(t == int(t) for t in times)
    assert np.all(np.diff(times) == 1.0)
    assert times[-1] == math.floor(windows[-1][1])
    assert all(s.probs.shape == (len(EMOTIONS),) for s in states(out))
    assert [x.t for x in out] == sorted(x.t for x in out)  # outputs come in time order


def test_state_interval_half_second() -> None:
    out = run(make_smoother(EmaSmootherConfig(state_interval_s=0.5), EMOTIONS), step_stream(stop=8.0))
    times = [s.t for s in states(out)]
    assert np.allclose(np.diff(times), 0.5)
    assert times[0] == 2.0 and times[-1] == 8.0


def test_gap_decay_keeps_ticking_without_fake_shifts() -> None:
    # A strong non-uniform prior would make "neutral" the argmax as the state decays: it must not be adopted.
    config = EmaSmootherConfig(gap_mode="decay", gap_decay_s=2.0, prior={"neutral": 0.9, "happy": 0.1})
    smoother = make_smoother(config, EMOTIONS)
    out = run(smoother, sliding(2.0, 6.0, lambda t1: probs(happy=0.8)))
    assert states(out)[-1].dominant == "happy"
    silent = smoother.gap(20.0)
    assert shifts(silent) == []
    ticks = states(silent)
    assert [s.t for s in ticks] == [float(t) for t in range(7, 21)]
    happy = EMOTIONS.index("happy")
    assert ticks[-1].probs[happy] < ticks[0].probs[happy]
    assert ticks[-1].dominant == UNCERTAIN


def test_gap_hold_keeps_the_state() -> None:
    smoother = make_smoother(EmaSmootherConfig(gap_mode="hold"), EMOTIONS)
    out = run(smoother, sliding(2.0, 6.0, lambda t1: probs(happy=0.8)))
    before = states(out)[-1]
    ticks = states(smoother.gap(15.0))
    assert len(ticks) == 9
    assert all(s.dominant == "happy" for s in ticks)
    assert np.allclose(ticks[-1].probs, before.probs)


def test_speech_after_a_gap_with_a_new_emotion_is_a_shift() -> None:
    smoother = make_smoother(EmaSmootherConfig(), EMOTIONS)
    out = run(smoother, sliding(2.0, 6.0, lambda t1: probs(happy=0.8)))
    out += smoother.gap(9.0)
    out += run(smoother, sliding(11.0, 16.0, lambda t1: probs(sad=0.8)), end=16.0)
    assert [(s.from_label, s.to_label) for s in shifts(out)] == [("happy", "sad")]
    assert shifts(out)[0].t >= 11.0


def test_hmm_commits_its_lag_on_flush() -> None:
    smoother = make_smoother(HmmSmootherConfig(lag_s=3.0), EMOTIONS)
    assert smoother.push(0.0, 2.0, probs(angry=0.9)) == []  # held back by the lag
    out = smoother.flush(2.0)
    assert [s.t for s in states(out)] == [2.0]
    assert states(out)[0].probs[EMOTIONS.index("angry")] > 0.5


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_reset_gives_the_same_output_as_a_new_smoother(kind: str) -> None:
    smoother = make_smoother(CONFIGS[kind], EMOTIONS)
    first = run(smoother, step_stream(), end=20.0)
    smoother.reset()
    again = run(smoother, step_stream(), end=20.0)
    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        assert type(a) is type(b) and a.t == b.t
        if isinstance(a, StateUpdate):
            assert a.dominant == b.dominant and np.array_equal(a.probs, b.probs)
        else:
            assert a == b


def test_other_label_sets_work() -> None:
    labels = ("neutral", "happy", "sad", "angry")
    smoother = make_smoother({"type": "median", "k": 3}, labels)
    assert isinstance(smoother, MedianSmoother)
    windows = sliding(2.0, 14.0, lambda t1: probs(labels, angry=0.7) if t1 <= 7 else probs(labels, neutral=0.7))
    out = run(smoother, windows, end=14.0)
    assert [(s.from_label, s.to_label) for s in shifts(out)] == [("angry", "neutral")]
    assert states(out)[-1].probs.shape == (4,)


def test_config_union_and_factory() -> None:
    assert isinstance(make_smoother({"type": "hmm", "lag_s": 2.0}, EMOTIONS), HmmSmoother)
    assert isinstance(make_smoother(EmaSmootherConfig(), EMOTIONS), EmaSmoother)
    assert parse_smoother_config({"type": "ema", "tau_s": 3}).tau_s == 3.0
    with pytest.raises(ValidationError, match="tau"):
        parse_smoother_config({"type": "ema", "tau": 3})  # extra fields are forbidden
    with pytest.raises(ValidationError, match="type"):
        parse_smoother_config({"type": "kalman"})
    with pytest.raises(ValidationError, match="self_transition"):
        HmmSmootherConfig(self_transition=1.0)


def test_bad_inputs_are_rejected_with_the_reason() -> None:
    smoother = make_smoother(EmaSmootherConfig(), EMOTIONS)
    with pytest.raises(ValueError, match="shape"):
        smoother.push(0.0, 2.0, np.ones(4) / 4)
    with pytest.raises(ValueError, match="t1 > t0"):
        smoother.push(2.0, 2.0, probs(happy=0.8))
    with pytest.raises(ValueError, match="non-negative"):
        smoother.push(0.0, 2.0, -probs(happy=0.8))
    smoother.push(1.0, 3.0, probs(happy=0.8))
    with pytest.raises(ValueError, match="in order"):
        smoother.push(0.0, 2.0, probs(happy=0.8))
    with pytest.raises(ValueError, match="reserved"):
        make_smoother(EmaSmootherConfig(), ("happy", UNCERTAIN))
    with pytest.raises(ValueError, match="prior"):
        make_smoother(EmaSmootherConfig(prior={"bored": 1.0}), EMOTIONS)


def test_incumbent_left_by_rotating_challengers_becomes_uncertain() -> None:
    """sad is clearly gone, but no single challenger holds for the dwell time: abstain, don't hold sad."""
    smoother = EmaSmoother(EmaSmootherConfig(tau_s=0.01, min_dwell_s=1.0), EMOTIONS)
    rotation = ["fearful", "angry", "happy", "fearful", "angry", "happy"]
    windows = sliding(2.0, 6.0, lambda t1: probs(sad=0.9))
    windows += sliding(6.5, 9.0, lambda t1: probs(**{rotation[int((t1 - 6.5) / HOP_S) % 6]: 0.7}))
    out = run(smoother, windows, end=9.0)
    states = [o for o in out if isinstance(o, StateUpdate)]
    shifts = [o for o in out if isinstance(o, Shift)]
    assert states[3].dominant == "sad"
    assert states[-1].dominant == UNCERTAIN
    assert shifts == []


# --- the segment smoother: utterances between pauses are the unit of change ------------------------------


def utterance(smoother, start: float, end: float, p: np.ndarray, hop: float = 1.0,
              window: float = 2.0) -> list[StateUpdate | Shift]:
    """One speech segment as the pipeline feeds it: segment start, growing then sliding windows, tail, a gap."""
    out = smoother.segment(start)
    ends = [start + hop * k for k in range(1, int((end - start) / hop + 1e-9) + 1)]
    for t1 in ends:
        out += smoother.push(max(start, t1 - window), t1, p)
    if not ends or ends[-1] < end - 1e-9:
        out += smoother.push(max(start, end - window), end, p)
    return out + smoother.gap(end + 0.5)


def test_segment_smoother_decides_each_utterance_after_one_second_at_its_start() -> None:
    smoother = make_smoother({"type": "segment"}, EMOTIONS)
    out = utterance(smoother, 0.0, 3.0, probs(happy=0.6))
    out += utterance(smoother, 3.6, 6.6, probs(sad=0.6))
    out += smoother.flush(7.5)
    assert [(s.from_label, s.to_label, s.onset, s.t) for s in shifts(out)] == [("happy", "sad", 3.6, 4.6)]
    assert {s.dominant for s in states(out) if 5.0 <= s.t <= 7.0} == {"sad"}


def test_segment_evidence_does_not_cross_a_pause() -> None:
    """A strongly happy utterance does not drag a weakly sad one: its first second decides alone."""
    smoother = make_smoother({"type": "segment"}, EMOTIONS)
    out = utterance(smoother, 0.0, 6.0, probs(happy=0.95))
    out += utterance(smoother, 6.5, 9.0, probs(sad=0.3, happy=0.2))
    assert [(s.from_label, s.to_label) for s in shifts(out)] == [("happy", "sad")]
    ema = make_smoother({"type": "ema", "tau_s": 2.0}, EMOTIONS)  # an average across the pause lags behind
    lagging = utterance(ema, 0.0, 6.0, probs(happy=0.95)) + utterance(ema, 6.5, 9.0, probs(sad=0.3, happy=0.2))
    assert shifts(lagging) == [] or shifts(lagging)[0].t > 7.5


def test_short_utterance_never_changes_the_emotion() -> None:
    smoother = make_smoother({"type": "segment"}, EMOTIONS)
    out = utterance(smoother, 0.0, 3.0, probs(happy=0.7))
    out += utterance(smoother, 3.5, 4.1, probs(angry=0.9))  # 0.6 s < min_segment_s (0.8 s)
    out += utterance(smoother, 4.6, 7.6, probs(happy=0.7))
    assert shifts(out) == []
    longer = make_smoother({"type": "segment", "min_segment_s": 0.5}, EMOTIONS)
    out = utterance(longer, 0.0, 3.0, probs(happy=0.7)) + utterance(longer, 3.5, 4.1, probs(angry=0.9))
    assert [(s.from_label, s.to_label, s.t) for s in shifts(out)] == [("happy", "angry", 4.6)]  # at the gap


def test_change_inside_a_long_utterance_needs_the_dwell() -> None:
    smoother = make_smoother({"type": "segment"}, EMOTIONS)
    out = smoother.segment(0.0)
    for t1 in np.arange(1.0, 21.0, 1.0):
        out += smoother.push(max(0.0, t1 - 2.0), t1, probs(happy=0.8) if t1 <= 10.0 else probs(sad=0.8))
    found = shifts(out)
    assert [(s.from_label, s.to_label) for s in found] == [("happy", "sad")]
    assert 10.0 + 3.0 <= found[0].t <= 10.0 + 3.0 + 4.0  # the dwell, plus the 4 s memory draining
    assert found[0].onset is not None and 9.0 <= found[0].onset <= 12.0


def test_a_segment_after_a_short_pause_continues_the_utterance() -> None:
    """continue_pause_s: a part that follows the previous one within the pause pools with it and decides
    nothing of its own; after a longer pause, or with the option off, it decides as usual."""

    def run_split(config: dict, pause: float, first_s: float = 2.0) -> list[tuple[str, str, float | None]]:
        smoother = make_smoother({"type": "segment", **config}, EMOTIONS)
        out = utterance(smoother, 0.0, 3.0, probs(neutral=0.7))
        out += smoother.segment(4.0)
        for t1 in np.arange(4.5, 4.0 + first_s + 1e-9, 0.5):
            out += smoother.push(max(4.0, t1 - 2.0), t1, probs(happy=0.7))
        start = 4.0 + first_s + pause
        out += smoother.segment(start)
        for t1 in (start + 1.0, start + 1.5):
            out += smoother.push(max(start, t1 - 1.0), t1, probs(sad=0.7))
        out += smoother.flush(start + 2.5)
        return [(s.from_label, s.to_label, s.onset) for s in shifts(out)]

    off = {"continue_pause_s": 0.0}
    assert run_split(off, 0.1) == [("neutral", "happy", 4.0), ("happy", "sad", 6.1)]
    assert run_split({}, 0.1) == [("neutral", "happy", 4.0)]  # the default: 0.15 s
    assert run_split({}, 0.3) == [("neutral", "happy", 4.0), ("happy", "sad", 6.3)]
    assert run_split({"continue_pause_s": 0.35}, 0.3) == [("neutral", "happy", 4.0)]
    # a first part too short to decide (0.5 s) is decided together with its continuation, from its start
    assert run_split({}, 0.1, first_s=0.5) == [("neutral", "sad", 4.0)]
    assert run_split(off, 0.1, first_s=0.5) == [("neutral", "sad", 4.6)]


def test_segment_smoother_abstains_when_asked_and_resets() -> None:
    strict = make_smoother({"type": "segment", "min_gap": 0.1}, EMOTIONS)
    out = utterance(strict, 0.0, 3.0, probs(happy=0.45, sad=0.45))
    assert states(out) and all(s.dominant == UNCERTAIN for s in states(out))
    smoother = make_smoother({"type": "segment"}, EMOTIONS)
    first = utterance(smoother, 0.0, 3.0, probs(happy=0.6)) + utterance(smoother, 3.6, 6.6, probs(sad=0.6))
    smoother.reset()
    again = utterance(smoother, 0.0, 3.0, probs(happy=0.6)) + utterance(smoother, 3.6, 6.6, probs(sad=0.6))
    assert [(type(a), a.t) for a in first] == [(type(b), b.t) for b in again]
    assert shifts(first) == shifts(again)


def test_segment_marks_are_harmless_to_the_other_smoothers() -> None:
    for kind in sorted(CONFIGS):
        plain = run(make_smoother(CONFIGS[kind], EMOTIONS), step_stream(), end=20.0)
        marked_smoother = make_smoother(CONFIGS[kind], EMOTIONS)
        marked = marked_smoother.segment(0.0) + run(marked_smoother, step_stream(), end=20.0)
        assert shifts(plain) == shifts(marked)
