"""Sliding windows over speech segments: a pure, synchronous push/flush/reset object per stream.

``Windower.push`` takes the segmenter's output (``SpeechBoundary`` and speech ``AudioBlock``) and returns
the ``Window``s it completes. Inside a segment a window of ``window_s`` is emitted every ``hop_s``. When the
segment ends, the audio no full window covered is scored by one last, shorter window: it starts where the
next full window would have started and ends at the segment's end, so it has the same context a window on
the hop grid would have had. It is emitted if at least ``min_window_s`` long; a segment shorter than
``window_s`` therefore gives exactly one window of its own length (or none below ``min_window_s``).

Window lengths are whole multiples of 320 samples (20 ms: one encoder frame, two 10 ms mel frames): a
length that is not is trimmed at the start (the newest audio is kept), never padded. Nothing is ever padded
to Whisper's 30 s.

With ``grow`` on, a segment also gets windows that start at the segment's start and end every ``hop_s``
until the first full window: a 2 s / 0.5 s windower scores 0.5, 1.0 and 1.5 s of a new segment before the
first 2 s window (those at least ``min_window_s`` long), so the first result about a new utterance comes
``hop_s`` after it starts instead of ``window_s``.

With ``whole_max_s`` set, a segment longer than ``window_s`` (which no single window covered) ends with one
window over all of it, or its last ``whole_max_s`` seconds, instead of the tail window: the encoder then sees
the whole utterance at once for its final label (``edge_ser.utterances``), as a clip is scored whole.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_ser.types import SAMPLE_RATE, AudioBlock, SpeechBoundary, Window

log = logging.getLogger(__name__)

WINDOW_QUANTUM = 320
"""Window lengths are multiples of this many samples (20 ms)."""


class WindowConfig(BaseModel):
    """Sliding windows over speech segments."""

    model_config = ConfigDict(extra="forbid")
    window_s: float = Field(2.0, ge=0.02, le=30.0, description="Window length (s), rounded down to 20 ms.")
    hop_s: float = Field(1.0, gt=0, le=30.0, description="Step between window starts inside a segment (s).")
    min_window_s: float = Field(0.5, ge=0.02, le=30.0, description="Shortest window scored at a segment's "
                                                                   "end or for a short segment (s).")
    grow: bool = Field(True, description="Also score windows from the segment start every hop_s until the first "
                                          "full window (a first result hop_s into each segment).")
    whole_max_s: float | None = Field(8.0, gt=0, le=30.0, description="End a segment longer than window_s with one "
                                      "window over all of it (at most its last whole_max_s seconds) instead of "
                                      "the tail window. None: the tail window.")

    @model_validator(mode="after")
    def _check(self) -> WindowConfig:
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s ({self.hop_s}) must be <= window_s ({self.window_s}): windows may "
                             "overlap but not leave gaps")
        if self.min_window_s > self.window_s:
            raise ValueError(f"min_window_s ({self.min_window_s}) must be <= window_s ({self.window_s})")
        return self


def _quantize(n: int) -> int:
    return n // WINDOW_QUANTUM * WINDOW_QUANTUM


class Windower:
    """Cuts one stream's speech segments into windows (see the module docstring)."""

    def __init__(self, stream_id: str, config: WindowConfig | None = None) -> None:
        self.stream_id = stream_id
        self.config = config or WindowConfig()
        self.window_samples = _quantize(round(self.config.window_s * SAMPLE_RATE))
        # at most a window: quantizing a window that is not a whole number of 20 ms frames shortens it, and a
        # hop longer than the window would leave audio between windows unscored
        self.hop_samples = max(1, min(round(self.config.hop_s * SAMPLE_RATE), self.window_samples))
        self.min_samples = max(WINDOW_QUANTUM, math.ceil(self.config.min_window_s * SAMPLE_RATE - 1e-6))
        whole = self.config.whole_max_s
        self.whole_samples = None if whole is None else max(self.window_samples, _quantize(round(whole * SAMPLE_RATE)))
        self.reset()

    def reset(self) -> None:
        """Drop the open segment and its buffered audio."""
        self._segment: int | None = None
        self._t0: float | None = None  # stream time of the segment's first sample
        self._buf = np.zeros(0, dtype=np.float32)  # segment samples from index self._buf_start on
        self._buf_start = 0
        self._n = 0  # samples received in the segment
        self._next = 0  # start (segment index) of the next full window
        self._covered = 0  # end of the last full window
        self._grown = 0  # end of the last growing window

    def push(self, item: SpeechBoundary | AudioBlock) -> list[Window]:
        """Feed one segmenter output; return the windows it completes."""
        if item.stream_id != self.stream_id:
            raise ValueError(f"windower for stream {self.stream_id!r} got an item of stream {item.stream_id!r}")
        if isinstance(item, SpeechBoundary):
            if item.kind == "start":
                out = self._close()
                self._segment = item.segment_id
                return out
            if item.kind == "end":
                if self._segment is not None and item.segment_id != self._segment:
                    log.warning("stream %s: end of segment %d while segment %d is open; closing it",
                                self.stream_id, item.segment_id, self._segment)
                return self._close()
            raise ValueError(f"stream {self.stream_id!r}: boundary kind {item.kind!r}; expected 'start' or 'end'")
        if self._segment is None:
            raise ValueError(f"stream {self.stream_id!r}: audio at {item.t0:.3f} s outside a speech segment; "
                             "expected a 'start' boundary first")
        if self._t0 is None:
            self._t0 = item.t0
        samples = np.asarray(item.samples, dtype=np.float32)
        self._buf = np.concatenate([self._buf, samples]) if self._buf.size else samples
        self._n += samples.size
        out = []
        if self.config.grow:
            while self._grown + self.hop_samples < min(self.window_samples, self._n + 1):
                self._grown += self.hop_samples
                length = _quantize(self._grown)
                if length >= self.min_samples:
                    out.append(self._window(self._grown - length, self._grown))
        while self._next + self.window_samples <= self._n:
            out.append(self._window(self._next, self._next + self.window_samples))
            self._covered = self._next + self.window_samples
            self._next += self.hop_samples
        keep_from = min(self._next, self._n)
        if self.whole_samples is not None:  # the audio a whole-segment window at the end would need
            keep_from = min(keep_from, max(0, self._n - self.whole_samples))
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return out

    def flush(self) -> list[Window]:
        """Close the open segment (end of stream): emit its tail (or whole-segment) window."""
        return self._close()

    def _close(self) -> list[Window]:
        out = []
        if self._segment is not None and self.whole_samples is not None and self._n > self.window_samples:
            length = _quantize(min(self._n, self.whole_samples))
            out.append(self._window(self._n - length, self._n))
        elif self._segment is not None and self._n > max(self._covered, self._grown):
            length = _quantize(self._n - min(self._next, self._n))
            if length >= self.min_samples:
                out.append(self._window(self._n - length, self._n))
        self.reset()
        return out

    def _window(self, start: int, end: int) -> Window:
        assert self._segment is not None and self._t0 is not None
        samples = self._buf[start - self._buf_start:end - self._buf_start].copy()
        return Window(self.stream_id, self._segment, self._t0 + start / SAMPLE_RATE, self._t0 + end / SAMPLE_RATE,
                      samples)
