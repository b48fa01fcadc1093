"""Per-stream temporal smoothing: window probabilities in, per-second states and emotion shifts out.

A smoother is pure and synchronous: the caller gives it stream-relative times, it never reads a clock.

Timeline. ``push(t0, t1, probs)`` gives the scores of the window ``[t0, t1]``; the evidence becomes
available at ``t1`` (the window's last sample), and windows must arrive in order of ``t1``.
``gap(t)`` says there was no speech up to ``t``; ``flush(t)`` says the stream ended at ``t``.

What comes out, in time order:

- :class:`StateUpdate` on a fixed grid (multiples of ``state_interval_s``, default 1 s) from the first
  decided evidence on: one per grid point while speech goes on, and also through gaps, where the state
  decays toward the prior (``gap_mode="decay"``) or holds (``"hold"``). ``t`` is the grid time: the state
  is what the smoother knew at ``t`` (evidence from windows that ended by then).
- :class:`Shift` when the dominant label changes from one emotion to another. ``t`` is when the change was
  decided (after smoothing, hysteresis and the minimum dwell); ``onset`` is where the smoother places the
  change, as a window centre: for ``ema`` and ``median`` the first of the latest run of raw windows in which
  the new label beat the old one, for ``hmm`` where the best path entered the new label. ``t - onset`` is
  the decision lag.

Every smoother shares one decision layer: a label is a *candidate* when its probability is at least
``min_confidence`` and leads the runner-up by at least ``min_gap``; otherwise the candidate is
``"uncertain"``. A candidate different from the current dominant label must stay the candidate for
``min_dwell_s`` before it is adopted. Changes to or from ``"uncertain"`` are reported as shifts only with
``report_uncertain``; otherwise a shift goes from the last certain label to the new one
(``happy -> uncertain -> sad`` gives one shift ``happy -> sad``; ``happy -> uncertain -> happy`` none).
The first label adopted after the start or :meth:`Smoother.reset` is not a shift. During a gap no new
emotion is adopted (decay must not invent shifts): a label other than the dominant one that comes out
ahead counts as ``"uncertain"``, so the state may only fall to ``"uncertain"``.

Smoothers (``type`` in :data:`SmootherConfig`):

- ``ema``: exponential moving average with a time constant ``tau_s``; each window's weight follows the new
  audio it brings (``1 - exp(-dt / tau_s)``, ``dt`` = hop, at most the window length); hysteresis: a
  challenger must lead the incumbent by ``margin``.
- ``hmm``: a hidden Markov model over the labels. Online forward filter, fixed-lag Viterbi decoding: a
  window's label is committed ``lag_s`` after it arrived (or, when speech stops sooner, as the next
  segment starts or at ``flush``), from the best path through all evidence so far. Switching costs follow
  ``self_transition`` (probability of staying in the same state over one second). The state's
  probabilities are the fixed-lag smoothed posterior of the last committed window.
- ``median``: per-class median over the last ``k`` windows (renormalised), with the same ``margin``
  hysteresis as ``ema``.
- ``segment``: speech segments (utterances between pauses, :meth:`Smoother.segment` marks each start) are
  the unit of change. The windows of the open segment are pooled (``edge_ser.utterances.SegmentEvidence``,
  the last ``memory_s`` of it); once the segment holds ``decide_after_s`` of audio (or ends sooner, being
  at least ``min_segment_s`` long) its estimate is decided at once, a change placed at the segment's start;
  later windows of the same segment go through the usual dwell and margin. Segments shorter than
  ``min_segment_s`` (clicks, breaths, fillers) never change the emotion. Evidence never crosses a pause, so a
  new utterance is not dragged toward the previous one's emotion, unless the pause is shorter than
  ``continue_pause_s``: such a segment is the same utterance split by the VAD, it pools with the previous
  segment's windows and only the dwell can change the label inside it.

:meth:`Smoother.segment` is a no-op for the others (they smooth across pauses).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from edge_ser.utterances import SegmentEvidence

log = logging.getLogger(__name__)

UNCERTAIN = "uncertain"
"""The dominant label when no class is clearly ahead."""

_EPS = 1e-6
_PROB_FLOOR = 1e-6
_RAW_HISTORY = 64  # raw windows kept to place the onset of a change


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """The smoothed state at grid time ``t`` (stream-relative seconds).

    ``probs`` are over the smoother's labels (read-only); ``dominant`` is one of them or ``"uncertain"``;
    ``confidence`` is the probability of the dominant label (for ``"uncertain"``: the top probability).
    """

    t: float
    probs: np.ndarray
    dominant: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Shift:
    """The dominant emotion changed: decided at ``t``, placed at ``onset`` (stream-relative seconds).

    ``confidence`` is the probability of ``to_label`` when the change was decided.
    """

    t: float
    from_label: str
    to_label: str
    confidence: float
    onset: float | None = None


SmootherOutput = StateUpdate | Shift


class _CommonSmootherConfig(BaseModel):
    """Fields every smoother shares: the state grid, the decision layer and the gap behaviour."""

    model_config = ConfigDict(extra="forbid")

    state_interval_s: float = Field(
        1.0, gt=0, description="Spacing of state updates in stream seconds; states land on its multiples."
    )
    min_dwell_s: float = Field(
        1.0,
        ge=0,
        description="Seconds a new dominant label (or 'uncertain') must stay the candidate before adoption.",
    )
    min_confidence: float = Field(
        0.35, ge=0, le=1, description="A top probability below this makes the state 'uncertain'."
    )
    min_gap: float = Field(
        0.1,
        ge=0,
        le=1,
        description="A gap between the top two probabilities below this makes the state 'uncertain'.",
    )
    report_uncertain: bool = Field(
        False, description="Also report shifts to and from 'uncertain' (otherwise only emotion to emotion)."
    )
    gap_mode: Literal["decay", "hold"] = Field(
        "decay",
        description="During gaps (no speech) the state decays toward the prior ('decay') or holds ('hold').",
    )
    gap_decay_s: float = Field(
        5.0, gt=0, description="Time constant in seconds of the decay toward the prior during gaps."
    )
    prior: dict[str, float] | None = Field(
        None,
        description="Class prior the state decays to during gaps ({label: weight}, normalised; labels left "
        "out get 0). None: uniform over the labels.",
    )


class EmaSmootherConfig(_CommonSmootherConfig):
    """Exponential moving average with hysteresis."""

    type: Literal["ema"] = Field("ema", description="Selects the exponential-moving-average smoother.")
    tau_s: float = Field(0.5, gt=0, description="Time constant of the moving average in seconds.")
    margin: float = Field(
        0.1, ge=0, le=1, description="Probability lead a challenger needs over the incumbent label."
    )


class HmmSmootherConfig(_CommonSmootherConfig):
    """Hidden Markov model: forward filter + fixed-lag Viterbi."""

    type: Literal["hmm"] = Field("hmm", description="Selects the HMM (forward filter + Viterbi) smoother.")
    min_dwell_s: float = Field(
        0.5,
        ge=0,
        description="Seconds a new dominant label (or 'uncertain') must stay the candidate before adoption "
        "(shorter than for the other smoothers: the switching penalty already debounces).",
    )
    self_transition: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Probability of staying in the same emotion over one second (the switching penalty).",
    )
    lag_s: float = Field(
        1.0, ge=0, description="Seconds after a window's arrival at which its Viterbi label is committed."
    )
    emission_weight: float | None = Field(
        0.5,
        gt=0,
        le=1,
        description="Exponent on the window probabilities (overlapping windows repeat evidence). None: "
        "the fraction of the window that is new (hop / window length).",
    )


class MedianSmootherConfig(_CommonSmootherConfig):
    """Per-class median over the last k windows, with hysteresis."""

    type: Literal["median"] = Field("median", description="Selects the median-filter smoother.")
    k: int = Field(5, ge=1, description="Number of most recent windows in the median.")
    margin: float = Field(
        0.1, ge=0, le=1, description="Probability lead a challenger needs over the incumbent label."
    )


class SegmentSmootherConfig(_CommonSmootherConfig):
    """Speech segments (utterances between pauses) as the unit of change."""

    type: Literal["segment"] = Field("segment", description="Selects the per-segment (utterance) smoother.")
    decide_after_s: float = Field(
        1.0, gt=0, description="Seconds of a segment's audio after which its estimate is decided at once (a "
        "change is placed at the segment's start); a shorter segment is decided when it ends.")
    min_segment_s: float = Field(
        0.8, ge=0, description="Segments shorter than this (clicks, breaths, single words) never change the "
        "emotion.")
    memory_s: float | None = Field(
        4.0, gt=0, description="Within a segment, pool only the windows that ended in the last memory_s seconds "
        "(None: the whole segment).")
    min_dwell_s: float = Field(
        3.0, ge=0, description="After a segment's decision, seconds a new label must stay the candidate before "
        "adoption (changes inside one long segment).")
    continue_pause_s: float = Field(
        0.15, ge=0, description="A segment that starts less than this many seconds after the previous one ended "
        "continues it (one utterance split at a short pause): its windows pool with the previous segment's and "
        "it makes no decision of its own, so only min_dwell_s can change the label. 0: every segment stands "
        "alone.")
    min_confidence: float = Field(
        0.25, ge=0, le=1, description="A top probability below this makes the state 'uncertain'.")
    min_gap: float = Field(
        0.0, ge=0, le=1, description="A gap between the top two probabilities below this makes the state "
        "'uncertain'.")
    margin: float = Field(
        0.1, ge=0, le=1, description="Probability lead a challenger needs over the incumbent label.")


AnySmootherConfig = EmaSmootherConfig | HmmSmootherConfig | MedianSmootherConfig | SegmentSmootherConfig

SmootherConfig = Annotated[AnySmootherConfig, Field(discriminator="type")]
"""Smoother settings; the ``type`` field ("ema" | "hmm" | "median" | "segment") picks the smoother."""

_CONFIG_ADAPTER: TypeAdapter[Any] = TypeAdapter(SmootherConfig)


def parse_smoother_config(data: Mapping[str, Any]) -> AnySmootherConfig:
    """Validate a mapping (e.g. from YAML) into the smoother config its ``type`` names."""
    return _CONFIG_ADAPTER.validate_python(dict(data))


@dataclass(frozen=True, slots=True)
class _Evidence:
    """A decided estimate: ``probs`` describing stream time ``te``; ``proposed`` overrides the argmax."""

    te: float
    probs: np.ndarray
    proposed: str | None = None
    placed: bool = False  # te already places a change to ``proposed`` (else: from the raw windows)
    immediate: bool = False  # adopt the candidate at once (no dwell): a decision made once per segment


class Smoother(ABC):
    """One stream's temporal smoother (see the module docstring for the timeline and the outputs)."""

    labels: tuple[str, ...]

    @abstractmethod
    def push(self, t0: float, t1: float, probs: np.ndarray) -> list[StateUpdate | Shift]:
        """Add the scores of window ``[t0, t1]``; returns the states and shifts due up to ``t1``."""

    @abstractmethod
    def gap(self, t: float) -> list[StateUpdate | Shift]:
        """No speech up to ``t``: states keep ticking (decay or hold); no new emotion is adopted."""

    @abstractmethod
    def segment(self, t: float) -> list[StateUpdate | Shift]:
        """A speech segment starts at ``t`` (after a pause; ``t`` may lie before the latest time given, as the
        VAD reaches back for the onset)."""

    @abstractmethod
    def flush(self, t: float) -> list[StateUpdate | Shift]:
        """The stream ends at ``t``: commit pending evidence and emit the states due up to ``t``."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything, as if newly made."""


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    out = tuple(labels)
    if len(out) < 2:
        raise ValueError(f"smoother labels: expected at least 2 labels, got {out!r}")
    if len(set(out)) != len(out) or any(not isinstance(x, str) or not x for x in out):
        raise ValueError(f"smoother labels: expected unique non-empty strings, got {out!r}")
    if UNCERTAIN in out:
        raise ValueError(f"smoother labels: {UNCERTAIN!r} is reserved for the undecided state, got {out!r}")
    return out


def _prior_vector(prior: Mapping[str, float] | None, labels: tuple[str, ...]) -> np.ndarray:
    if prior is None:
        return np.full(len(labels), 1.0 / len(labels))
    unknown = sorted(set(prior) - set(labels))
    if unknown:
        raise ValueError(f"smoother config field 'prior': labels {unknown} are not among {list(labels)}")
    vec = np.array([float(prior.get(x, 0.0)) for x in labels])
    if not np.all(np.isfinite(vec)) or np.any(vec < 0) or vec.sum() <= 0:
        raise ValueError(
            f"smoother config field 'prior': expected non-negative weights with a positive sum, got {prior!r}"
        )
    return vec / vec.sum()


class _GridSmoother(Smoother):
    """The shared machinery: the state grid, the decision layer (uncertain, dwell, margin), gaps.

    Subclasses turn windows into :class:`_Evidence` (``_observe``), may hold evidence back (``_due``,
    ``_finalize``, ``_has_pending``) and decay their own memory during gaps (``_decay_model``).
    """

    def __init__(self, config: _CommonSmootherConfig, labels: Sequence[str], margin: float = 0.0) -> None:
        self.labels = _check_labels(labels)
        self.config = config
        self._index = {x: i for i, x in enumerate(self.labels)}
        self._margin = margin
        self._prior = _prior_vector(config.prior, self.labels)
        self.reset()

    # --- subclass hooks -----------------------------------------------------------------------------
    @abstractmethod
    def _reset_model(self) -> None: ...

    @abstractmethod
    def _observe(self, t0: float, t1: float, probs: np.ndarray) -> list[_Evidence]: ...

    @abstractmethod
    def _decay_model(self, factor: float) -> None: ...

    def _due(self, t: float) -> list[_Evidence]:
        return []

    def _finalize(self) -> list[_Evidence]:
        return []

    def _has_pending(self) -> bool:
        return False

    def _segment_start(self, t: float) -> list[_Evidence]:
        return []

    def _segment_over(self) -> list[_Evidence]:
        return []

    # --- public interface ---------------------------------------------------------------------------
    def reset(self) -> None:
        self._probs: np.ndarray | None = None  # the current estimate (what states publish)
        self._proposed: str | None = None
        self._dominant = UNCERTAIN
        self._last_certain: str | None = None
        self._pending: str | None = None
        self._pending_since = 0.0
        self._pending_onset = 0.0
        self._unseated_since: float | None = None  # when the dominant label stopped being the candidate
        self._now = -math.inf
        self._k = 0  # index of the next grid point to emit
        self._decay_from = 0.0
        self._in_gap = False
        self._raw: deque[tuple[float, np.ndarray]] = deque(maxlen=_RAW_HISTORY)
        self._reset_model()

    def push(self, t0: float, t1: float, probs: np.ndarray) -> list[StateUpdate | Shift]:
        p = self._check_window(t0, t1, probs)
        out: list[StateUpdate | Shift] = []
        self._tick(t1, inclusive=False, out=out)
        if self._in_gap:
            for ev in self._finalize():
                self._apply(t1, ev, out)
            self._in_gap = False
        self._raw.append(((t0 + t1) / 2, p))
        for ev in self._observe(float(t0), float(t1), p):
            self._apply(t1, ev, out)
        self._now = float(t1)
        self._tick(t1, inclusive=True, out=out)
        return out

    def gap(self, t: float) -> list[StateUpdate | Shift]:
        t = self._check_time(t, "gap")
        out: list[StateUpdate | Shift] = []
        over = self._segment_over()
        if over:
            self._tick(t, inclusive=False, out=out)
            for ev in over:
                self._apply(max(t, self._now), ev, out)
        self._in_gap = True
        self._tick(t, inclusive=True, out=out)
        self._now = max(self._now, t)
        return out

    def segment(self, t: float) -> list[StateUpdate | Shift]:
        t = self._check_time(t, "segment")
        now = max(t, self._now)
        out: list[StateUpdate | Shift] = []
        self._tick(now, inclusive=False, out=out)
        for ev in self._segment_start(t):
            self._apply(now, ev, out)
        return out

    def flush(self, t: float) -> list[StateUpdate | Shift]:
        t = max(self._check_time(t, "flush"), self._now)
        out: list[StateUpdate | Shift] = []
        self._tick(t, inclusive=False, out=out)
        for ev in self._segment_over():
            self._apply(t, ev, out)
        for ev in self._finalize():
            self._apply(t, ev, out)
        self._tick(t, inclusive=True, out=out)
        self._now = t
        return out

    # --- validation ---------------------------------------------------------------------------------
    @staticmethod
    def _check_time(t: float, what: str) -> float:
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"smoother {what}: time must be finite, got {t!r}")
        return t

    def _check_window(self, t0: float, t1: float, probs: np.ndarray) -> np.ndarray:
        t0 = self._check_time(t0, "push t0")
        t1 = self._check_time(t1, "push t1")
        if t1 <= t0:
            raise ValueError(f"smoother push: expected t1 > t0, got t0={t0!r}, t1={t1!r}")
        if t1 < self._now - _EPS:
            raise ValueError(
                f"smoother push: windows must arrive in order of end time; got t1={t1!r} after time "
                f"{self._now!r}"
            )
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (len(self.labels),):
            raise ValueError(
                f"smoother push: expected probs of shape ({len(self.labels)},) for labels "
                f"{list(self.labels)}, got shape {p.shape}"
            )
        if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
            raise ValueError(f"smoother push: expected finite non-negative probs with a positive sum, got {p}")
        return p / p.sum()

    # --- the grid -----------------------------------------------------------------------------------
    def _grid(self, k: int) -> float:
        return round(k * self.config.state_interval_s, 9)

    def _tick(self, t: float, inclusive: bool, out: list[StateUpdate | Shift]) -> None:
        """Emit the grid points before ``t`` (or up to it when ``inclusive``)."""
        step = self.config.state_interval_s
        stop = math.floor(t / step + _EPS) + 1 if inclusive else math.ceil(t / step - _EPS)
        while self._k < stop:
            g = self._grid(self._k)
            for ev in self._due(g):
                self._apply(g, ev, out)
            if self._probs is None:
                break  # no state before the first decided evidence (``_apply`` moves the grid there)
            if self._in_gap and self.config.gap_mode == "decay" and not self._has_pending():
                self._decay_to(g)
            self._evaluate(g, g, gap_tick=self._in_gap, out=out)
            out.append(self._state(g))
            self._k += 1

    def _decay_to(self, t: float) -> None:
        assert self._probs is not None
        dt = t - self._decay_from
        if dt <= 0:
            return
        factor = math.exp(-dt / self.config.gap_decay_s)
        self._probs = self._prior + (self._probs - self._prior) * factor
        self._decay_model(factor)
        self._decay_from = t

    def _state(self, t: float) -> StateUpdate:
        assert self._probs is not None
        probs = self._probs.astype(np.float32)
        probs.setflags(write=False)
        return StateUpdate(t=t, probs=probs, dominant=self._dominant, confidence=self._confidence_of(self._dominant))

    def _confidence_of(self, label: str) -> float:
        assert self._probs is not None
        if label == UNCERTAIN:
            return float(self._probs.max())
        return float(self._probs[self._index[label]])

    # --- the decision layer -------------------------------------------------------------------------
    def _apply(self, t: float, ev: _Evidence, out: list[StateUpdate | Shift]) -> None:
        if self._probs is None:  # the first evidence: states start at the next grid point
            self._k = max(self._k, math.ceil(t / self.config.state_interval_s - _EPS))
        self._probs = ev.probs
        self._proposed = ev.proposed
        self._decay_from = max(self._decay_from, t)
        self._evaluate(t, ev.te, gap_tick=False, out=out, placed=ev.placed, immediate=ev.immediate)

    def _place_onset(self, cand: str, fallback: float) -> float:
        """Where a change from the dominant label to ``cand`` began: the start of the latest run of raw
        windows in which ``cand`` beat the dominant label (``fallback`` when there is none)."""
        if cand == UNCERTAIN or self._dominant == UNCERTAIN:
            return fallback
        i_new, i_old = self._index[cand], self._index[self._dominant]
        onset = fallback
        for te, p in reversed(self._raw):
            if p[i_new] <= p[i_old]:
                break
            onset = min(onset, te)
        return onset

    def _candidate(self, hysteresis: bool = True) -> str:
        probs = self._probs
        assert probs is not None
        i1, i2 = np.argsort(-probs, kind="stable")[:2]
        p1, p2 = float(probs[i1]), float(probs[i2])
        if p1 < self.config.min_confidence or p1 - p2 < self.config.min_gap:
            return UNCERTAIN
        cand = self._proposed if self._proposed is not None else self.labels[i1]
        if hysteresis and cand != self._dominant and self._dominant != UNCERTAIN and self._margin > 0:
            lead = probs[self._index[cand]] - probs[self._index[self._dominant]]
            if lead < self._margin - _EPS:
                return self._dominant
        return cand

    def _evaluate(
        self,
        t: float,
        te: float,
        gap_tick: bool,
        out: list[StateUpdate | Shift],
        placed: bool = False,
        immediate: bool = False,
    ) -> None:
        cand = self._candidate(hysteresis=not immediate)
        if cand == self._dominant:
            self._pending = None
            self._unseated_since = None
            return
        if gap_tick and cand != UNCERTAIN:
            cand = UNCERTAIN  # no new emotion without evidence: a challenger only unseats the incumbent
            if cand == self._dominant:
                self._pending = None
                self._unseated_since = None
                return
        if self._unseated_since is None:
            self._unseated_since = t
        if cand != self._pending:
            onset = te if placed else self._place_onset(cand, te)
            self._pending, self._pending_since, self._pending_onset = cand, t, onset
        dwell = self.config.min_dwell_s - _EPS
        if immediate or t - self._pending_since >= dwell:
            self._adopt(t, out)
        elif self._dominant != UNCERTAIN and t - self._unseated_since >= dwell:
            # challengers keep replacing each other: abstain rather than hold a label the evidence left
            self._pending, self._pending_onset = UNCERTAIN, self._unseated_since
            self._adopt(t, out)

    def _adopt(self, t: float, out: list[StateUpdate | Shift]) -> None:
        assert self._pending is not None
        prev, new = self._dominant, self._pending
        self._dominant, self._pending = new, None
        self._unseated_since = None
        from_label: str | None = None
        if self.config.report_uncertain:
            if self._last_certain is not None:
                from_label = prev
        elif new != UNCERTAIN and self._last_certain is not None and new != self._last_certain:
            from_label = self._last_certain
        if new != UNCERTAIN:
            self._last_certain = new
        if from_label is not None:
            shift = Shift(
                t=t,
                from_label=from_label,
                to_label=new,
                confidence=self._confidence_of(new),
                onset=self._pending_onset,
            )
            log.debug("shift %s -> %s at t=%.3f (onset %.3f)", from_label, new, t, shift.onset)
            out.append(shift)


def _hop(t0: float, t1: float, prev_t1: float | None) -> float:
    """Seconds of audio the window ``[t0, t1]`` adds after the previous window ended at ``prev_t1``."""
    if prev_t1 is None:
        return t1 - t0
    return max(0.0, min(t1 - prev_t1, t1 - t0))


class EmaSmoother(_GridSmoother):
    """Exponential moving average with a time-aware weight and margin hysteresis."""

    config: EmaSmootherConfig

    def __init__(self, config: EmaSmootherConfig, labels: Sequence[str]) -> None:
        super().__init__(config, labels, margin=config.margin)

    def _reset_model(self) -> None:
        self._est: np.ndarray | None = None
        self._prev_t1: float | None = None

    def _observe(self, t0: float, t1: float, probs: np.ndarray) -> list[_Evidence]:
        if self._est is None:
            est = probs.copy()
        else:
            alpha = 1.0 - math.exp(-_hop(t0, t1, self._prev_t1) / self.config.tau_s)
            est = (1.0 - alpha) * self._est + alpha * probs
        self._est, self._prev_t1 = est, t1
        return [_Evidence(te=(t0 + t1) / 2, probs=est)]

    def _decay_model(self, factor: float) -> None:
        assert self._est is not None
        self._est = self._prior + (self._est - self._prior) * factor


class MedianSmoother(_GridSmoother):
    """Per-class median over the last ``k`` windows, renormalised, with margin hysteresis."""

    config: MedianSmootherConfig

    def __init__(self, config: MedianSmootherConfig, labels: Sequence[str]) -> None:
        super().__init__(config, labels, margin=config.margin)

    def _reset_model(self) -> None:
        self._buf: deque[np.ndarray] = deque(maxlen=self.config.k)

    def _observe(self, t0: float, t1: float, probs: np.ndarray) -> list[_Evidence]:
        self._buf.append(probs)
        med = np.median(np.stack(self._buf), axis=0)
        total = med.sum()
        est = med / total if total > 0 else np.full(len(self.labels), 1.0 / len(self.labels))
        return [_Evidence(te=(t0 + t1) / 2, probs=est)]

    def _decay_model(self, factor: float) -> None:
        # Blending every window toward the prior blends their median the same way.
        for i, p in enumerate(self._buf):
            self._buf[i] = self._prior + (p - self._prior) * factor


@dataclass(frozen=True, slots=True)
class _Obs:
    """One window in the HMM's lag buffer."""

    t1: float
    te: float
    log_trans: np.ndarray | None  # transition into this window (None: first of its segment)
    lik: np.ndarray  # emission likelihood, scaled to max 1
    alpha: np.ndarray  # filtered posterior after this window
    backptr: np.ndarray | None  # best predecessor state for each state
    entered: np.ndarray  # for each state: when the best path ending there entered it (window centre)


class HmmSmoother(_GridSmoother):
    """Forward-filtered HMM with fixed-lag Viterbi decisions (see the module docstring)."""

    config: HmmSmootherConfig

    def __init__(self, config: HmmSmootherConfig, labels: Sequence[str]) -> None:
        super().__init__(config, labels)

    def _reset_model(self) -> None:
        self._alpha = self._prior.copy()
        self._delta: np.ndarray | None = None
        self._entered = np.zeros(len(self.labels))
        self._buf: deque[_Obs] = deque()
        self._prev_t1: float | None = None
        self._open = False

    def _log_trans(self, dt: float) -> np.ndarray:
        n = len(self.labels)
        stay = self.config.self_transition**dt
        off = max((1.0 - stay) / (n - 1), 1e-12)
        out = np.full((n, n), math.log(off))
        np.fill_diagonal(out, math.log(max(stay, 1e-12)))
        return out

    def _observe(self, t0: float, t1: float, probs: np.ndarray) -> list[_Evidence]:
        hop = _hop(t0, t1, self._prev_t1 if self._open else None)
        weight = self.config.emission_weight
        if weight is None:
            weight = min(1.0, hop / (t1 - t0)) if hop > 0 else 1.0
        loglik = weight * np.log(np.maximum(probs, _PROB_FLOOR))
        loglik -= loglik.max()
        lik = np.exp(loglik)
        te = (t0 + t1) / 2
        states = np.arange(len(self.labels))
        if not self._open or self._delta is None:
            log_trans, backptr = None, None
            pred = self._alpha
            delta = np.log(np.maximum(pred, 1e-300)) + loglik
            entered = np.full(len(self.labels), te)
            self._open = True
        else:
            log_trans = self._log_trans(hop)
            pred = self._alpha @ np.exp(log_trans)
            scores = self._delta[:, None] + log_trans
            backptr = np.argmax(scores, axis=0)
            delta = scores[backptr, states] + loglik
            entered = np.where(backptr == states, self._entered[backptr], te)
        alpha = pred * lik
        self._alpha = alpha / alpha.sum()
        self._delta = delta - delta.max()
        self._entered = entered
        self._prev_t1 = t1
        self._buf.append(_Obs(t1, te, log_trans, lik, self._alpha, backptr, entered))
        return self._due(t1)

    def _due(self, t: float) -> list[_Evidence]:
        n = 0
        while n < len(self._buf) and self._buf[n].t1 + self.config.lag_s <= t + _EPS:
            n += 1
        return self._commit(n)

    def _finalize(self) -> list[_Evidence]:
        out = self._commit(len(self._buf))
        self._open = False
        return out

    def _has_pending(self) -> bool:
        return bool(self._buf)

    def _commit(self, n: int) -> list[_Evidence]:
        """Decide the oldest ``n`` buffered windows from the best path and the smoothed posterior."""
        if n == 0:
            return []
        assert self._delta is not None
        buf = list(self._buf)
        # Viterbi backtrace from the best current state.
        path = [0] * len(buf)
        path[-1] = int(np.argmax(self._delta))
        for i in range(len(buf) - 1, 0, -1):
            bp = buf[i].backptr
            assert bp is not None  # the buffer only ever holds one segment's chain
            path[i - 1] = int(bp[path[i]])
        # Backward pass for the fixed-lag smoothed posteriors.
        beta = np.ones(len(self.labels))
        betas = [beta] * len(buf)
        for i in range(len(buf) - 2, -1, -1):
            nxt = buf[i + 1]
            assert nxt.log_trans is not None
            beta = np.exp(nxt.log_trans) @ (nxt.lik * beta)
            beta = beta / beta.sum()
            betas[i] = beta
        out = []
        for i in range(n):
            gamma = buf[i].alpha * betas[i]
            # A change to this label is placed where the best path entered it.
            onset = float(buf[i].entered[path[i]])
            out.append(
                _Evidence(te=onset, probs=gamma / gamma.sum(), proposed=self.labels[path[i]], placed=True)
            )
            self._buf.popleft()
        return out

    def _decay_model(self, factor: float) -> None:
        self._alpha = self._prior + (self._alpha - self._prior) * factor


class SegmentSmoother(_GridSmoother):
    """Speech segments as the unit of change (see the module docstring)."""

    config: SegmentSmootherConfig

    def __init__(self, config: SegmentSmootherConfig, labels: Sequence[str]) -> None:
        super().__init__(config, labels, margin=config.margin)

    def _reset_model(self) -> None:
        self._evidence = SegmentEvidence(len(self.labels), self.config.memory_s)
        self._seg_start: float | None = None
        self._decided = False
        self._ended: tuple[SegmentEvidence, bool, float | None] | None = None  # the last segment, continuable

    def _segment_start(self, t: float) -> list[_Evidence]:
        out = self._segment_over()
        ended, self._ended = self._ended, None
        if ended is not None and t - ended[0].end < self.config.continue_pause_s - _EPS:
            self._evidence, self._decided, self._seg_start = ended
        else:
            self._seg_start = t
        return out

    def _segment_over(self) -> list[_Evidence]:
        out = []
        if not self._decided and not self._evidence.empty and self._evidence.span_s >= self.config.min_segment_s - _EPS:
            out.append(self._decision())
        if not self._evidence.empty:
            self._ended = (self._evidence, self._decided, self._seg_start)
        self._evidence = SegmentEvidence(len(self.labels), self.config.memory_s)
        self._seg_start = None
        self._decided = False
        return out

    def _decision(self) -> _Evidence:
        self._decided = True
        start = self._evidence.start if self._seg_start is None else min(self._seg_start, self._evidence.start)
        return _Evidence(te=start, probs=self._evidence.probs(), placed=True, immediate=True)

    def _observe(self, t0: float, t1: float, probs: np.ndarray) -> list[_Evidence]:
        self._evidence.add(t0, t1, probs)
        if self._decided:
            return [_Evidence(te=(t0 + t1) / 2, probs=self._evidence.probs())]
        span = self._evidence.span_s
        if span >= self.config.decide_after_s - _EPS and span >= self.config.min_segment_s - _EPS:
            return [self._decision()]
        return []

    def _decay_model(self, factor: float) -> None:
        pass  # the pooled evidence belongs to one segment and is dropped at its end


def make_smoother(
    config: AnySmootherConfig | Mapping[str, Any],
    labels: Sequence[str],
) -> Smoother:
    """Build the smoother ``config`` selects, over the model's ``labels`` (in output order)."""
    if isinstance(config, Mapping):
        config = parse_smoother_config(config)
    if isinstance(config, EmaSmootherConfig):
        return EmaSmoother(config, labels)
    if isinstance(config, HmmSmootherConfig):
        return HmmSmoother(config, labels)
    if isinstance(config, MedianSmootherConfig):
        return MedianSmoother(config, labels)
    if isinstance(config, SegmentSmootherConfig):
        return SegmentSmoother(config, labels)
    raise TypeError(
        f"make_smoother: expected a smoother config (ema | hmm | median | segment), got {type(config).__name__}"
    )
