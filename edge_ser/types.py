"""Plain data types that flow between the pipeline stages (source -> VAD -> windows -> engine -> smoother).

Every stage takes stream-relative time as input (seconds since the stream started), never the wall clock,
so replays on a simulated clock and tests are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
"""Every stage after the source works on 16 kHz mono float32 audio in [-1, 1]."""

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised", "other")
"""The model's 8 output classes, in output order (SCIENCE.md, EVAL.md)."""


@dataclass(frozen=True, slots=True)
class AudioBlock:
    """A run of samples from one stream, starting at stream-relative time ``t0`` (seconds)."""

    stream_id: str
    t0: float
    samples: np.ndarray  # float32, mono, SAMPLE_RATE

    @property
    def t1(self) -> float:
        return self.t0 + len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class SpeechBoundary:
    """The VAD's decision that speech started (``kind='start'``) or ended (``kind='end'``) at ``t``."""

    stream_id: str
    kind: str  # "start" | "end"
    t: float
    segment_id: int


@dataclass(frozen=True, slots=True)
class Window:
    """A slice of speech to score: samples from ``t0`` to ``t1`` (stream-relative seconds)."""

    stream_id: str
    segment_id: int
    t0: float
    t1: float
    samples: np.ndarray  # float32, mono, SAMPLE_RATE
    ready_at: float = 0.0  # monotonic clock when its last sample became available (latency metrics)
    offset: np.ndarray | None = None  # the stream's centring offset at submit time (edge_ser.centring)


@dataclass(frozen=True, slots=True)
class WindowScore:
    """The engine's answer for one window: class probabilities (len(EMOTIONS)) and per-second logits."""

    window: Window
    probs: np.ndarray  # float32 (n_classes,), sums to 1
    frame_logits: np.ndarray | None = field(default=None)  # (frames, n_classes), 50 frames per second
