"""Per-utterance emotion: the windows of one speech segment pooled into one estimate. Pure and synchronous.

A speech segment (speech between two pauses, as the VAD cuts it) is where emotion is most stable: people
change emotion between utterances far more often than inside one. Two things pool a segment's windows:

- :class:`SegmentEvidence` pools the window probabilities of one segment. A window that lies inside a later
  window of the same segment (the growing windows at a segment's start, see ``windows.WindowConfig.grow``)
  is superseded by it, up to the 20 ms by which the windower cuts a window's start to a whole number of
  encoder frames (so the segment's closing window, over all of it, replaces the 1 s window it began with);
  the others are averaged in the log domain, each weighted by the audio it adds after the previous one (a
  weighted geometric mean, renormalised). For the frame head, whose clip logits are the
  mean of its frame logits, that is the mean of the windows' clip logits up to a constant. ``memory_s``
  keeps only windows that ended within that many seconds of the newest one (None: the whole segment).
- :class:`UtteranceTracker` groups one stream's windows by segment id and returns an :class:`Utterance`
  (start, end, pooled probabilities, label) for every segment once it is over: when a window of a later
  segment arrives or :meth:`UtteranceTracker.close` is called (a pause, the end of the stream). This is the
  final, per-utterance answer; the smoother's per-second states are the live one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_ser.types import SAMPLE_RATE
from edge_ser.windows import WINDOW_QUANTUM

_PROB_FLOOR = 1e-6
_EPS = 1e-6
_QUANTUM_S = WINDOW_QUANTUM / SAMPLE_RATE
"""A window's length is a multiple of 20 ms, cut at its start (``edge_ser.windows``): a window that ends later
and starts up to this much after another still holds all of its speech."""


class SegmentEvidence:
    """The pooled probabilities of one segment's windows (see the module docstring)."""

    def __init__(self, n_labels: int, memory_s: float | None = None) -> None:
        if memory_s is not None and memory_s <= 0:
            raise ValueError(f"segment evidence: memory_s must be > 0 or None, got {memory_s!r}")
        self.n_labels = n_labels
        self.memory_s = memory_s
        self._windows: list[tuple[float, float, np.ndarray]] = []  # (t0, t1, log probs), none inside another

    @property
    def empty(self) -> bool:
        return not self._windows

    @property
    def start(self) -> float:
        """Start of the earliest window kept (the segment's start while memory_s allows)."""
        return self._windows[0][0]

    @property
    def end(self) -> float:
        return self._windows[-1][1]

    @property
    def span_s(self) -> float:
        """Seconds of audio the kept windows cover."""
        return self.end - self.start if self._windows else 0.0

    def add(self, t0: float, t1: float, probs: np.ndarray) -> None:
        """Add window ``[t0, t1]`` (windows arrive in order of ``t1``)."""
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (self.n_labels,):
            raise ValueError(f"segment evidence: expected probs of shape ({self.n_labels},), got {p.shape}")
        logp = np.log(np.maximum(p / p.sum(), _PROB_FLOOR))
        while self._windows and self._windows[-1][0] >= t0 - _QUANTUM_S - _EPS:  # the new window contains it
            self._windows.pop()
        self._windows.append((float(t0), float(t1), logp))
        if self.memory_s is not None:
            horizon = t1 - self.memory_s
            self._windows = [w for w in self._windows if w[1] > horizon + _EPS] or self._windows[-1:]

    def probs(self) -> np.ndarray:
        """The pooled distribution over the labels (uniform when no window was added)."""
        if not self._windows:
            return np.full(self.n_labels, 1.0 / self.n_labels)
        weights, rows = [], []
        prev_end: float | None = None
        for t0, t1, logp in self._windows:
            weights.append(t1 - t0 if prev_end is None else max(t1 - max(prev_end, t0), _EPS))
            rows.append(logp)
            prev_end = t1
        w = np.asarray(weights)
        mean = (w[:, None] * np.stack(rows)).sum(axis=0) / w.sum()
        out = np.exp(mean - mean.max())
        return out / out.sum()


@dataclass(frozen=True, slots=True)
class Utterance:
    """One speech segment's final emotion: pooled ``probs`` over the model's labels and their argmax."""

    segment_id: int
    start: float
    end: float
    probs: np.ndarray
    label: str
    confidence: float
    windows: int


class UtteranceTracker:
    """Per stream: pools windows by segment and returns each segment's :class:`Utterance` once it is over."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self.reset()

    def reset(self) -> None:
        self._segment: int | None = None
        self._evidence = SegmentEvidence(len(self.labels))
        self._count = 0

    def push(self, segment_id: int, t0: float, t1: float, probs: np.ndarray) -> list[Utterance]:
        """Add a window of segment ``segment_id``; returns the previous segment's utterance when this one is new."""
        out = self.close() if self._segment is not None and segment_id != self._segment else []
        self._segment = segment_id
        self._evidence.add(t0, t1, probs)
        self._count += 1
        return out

    def close(self) -> list[Utterance]:
        """The open segment is over (a pause or the end of the stream): its utterance, if it had windows."""
        if self._segment is None or self._evidence.empty:
            self.reset()
            return []
        probs = self._evidence.probs()
        best = int(np.argmax(probs))
        utterance = Utterance(self._segment, self._evidence.start, self._evidence.end, probs.astype(np.float32),
                              self.labels[best], float(probs[best]), self._count)
        self.reset()
        return [utterance]
