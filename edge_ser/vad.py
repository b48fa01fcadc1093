"""Speech segmentation with webrtcvad: a pure, synchronous push/flush/reset object per stream.

``Segmenter.push(block)`` classifies fixed frames (10/20/30 ms) and returns, in time order,
``SpeechBoundary`` start/end markers and the speech samples between them as ``AudioBlock``s stamped with
their true stream time. A segment opens once ``start_hangover_ms`` of consecutive speech frames are seen
(and reaches back ``pre_roll_ms`` before them, to keep the onset) and closes after ``end_hangover_ms`` of
non-speech. Non-speech frames inside a segment are held back until speech resumes, so a segment never ends
with its closing silence and its end boundary is the end of the last speech frame. Segments longer than
``max_segment_s`` are split (an end and a start at the same instant).

webrtcvad alone calls steady low-level noise speech, so pauses filled with noise would never end a segment
and noise bursts would open one. Two tests guard against that:

- the energy gate (``gate_above_floor_db``; None turns it off): a frame counts as speech only when webrtcvad
  says so *and* its energy is ``gate_above_floor_db`` over the noise floor (10th percentile of the frame
  energies of the last ``gate_window_s``) and no more than ``gate_below_speech_db`` under the speech level
  (their 90th percentile); digital silence (below -90 dBFS) is never speech and stays out of both;
- voicing: a segment opens only once its run of speech frames holds ``min_voiced_ms`` of voiced frames (a
  periodic waveform: normalised autocorrelation peak of at least ``voicing_threshold`` at a pitch lag of
  2.5-20 ms). Noise, clicks and hum carry no vowel. Inside a segment, once its speech frames have gone
  ``max_unvoiced_ms`` without a voiced one, the segment ends there: noise louder than the floor that
  follows an utterance (and that webrtcvad and the gate let through) does not carry the segment on into
  the next utterance. Pauses of silence do not count toward it; ``end_hangover_ms`` ends those.

Blocks may have any length (an internal buffer cuts frames). Time is an input: stream-relative seconds from
the blocks, never the clock. A block that does not continue where the previous one ended (a gap in the
stream) closes the open segment and restarts the frame grid at the new block.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Literal

import numpy as np
import webrtcvad
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_ser.types import SAMPLE_RATE, AudioBlock, SpeechBoundary

log = logging.getLogger(__name__)

GAP_TOLERANCE_S = 0.001
"""A block starting further than this from where the previous one ended is a discontinuity."""


class VadConfig(BaseModel):
    """Voice activity detection and speech segmentation."""

    model_config = ConfigDict(extra="forbid")
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode: 0 keeps the most audio as speech, "
                                                           "3 filters non-speech most aggressively.")
    frame_ms: Literal[10, 20, 30] = Field(30, description="VAD frame length (ms).")
    start_hangover_ms: int = Field(150, ge=0, le=5000, description="Consecutive speech needed to open a "
                                                                  "segment (ms); at least one frame.")
    end_hangover_ms: int = Field(250, ge=0, le=10000, description="Non-speech that closes a segment (ms); at "
                                                                  "least one frame. Segments are utterances: the "
                                                                  "smoother decides emotion per segment.")
    pre_roll_ms: int = Field(200, ge=0, le=5000, description="Audio kept before the detected speech onset (ms).")
    max_segment_s: float = Field(30.0, ge=1.0, le=3600.0, description="Longer segments are split (s).")
    gate_above_floor_db: float | None = Field(
        10.0, ge=0.0, le=60.0, description="Energy gate: a speech frame must be this many dB above the running noise "
        "floor (10th percentile of recent frame energies). None: webrtcvad alone.")
    gate_below_speech_db: float = Field(
        30.0, ge=0.0, le=90.0, description="Energy gate: a speech frame must also be within this many dB of the "
        "running speech level (90th percentile of recent frame energies).")
    min_voiced_ms: int = Field(60, ge=0, le=5000, description="Voiced speech a run must hold before a segment "
                                                              "opens (ms; 0: no voicing test).")
    voicing_threshold: float = Field(0.6, gt=0.0, lt=1.0, description="Normalised autocorrelation peak (pitch lags "
                                                                     "2.5-20 ms) that makes a frame voiced.")
    gate_window_s: float = Field(10.0, ge=0.5, le=600.0, description="Energy gate: seconds of frame energies the "
                                                                     "floor and speech level are taken over.")
    max_unvoiced_ms: int | None = Field(
        300, ge=30, le=10000, description="Inside a segment: speech frames without a voiced one for this long end "
        "the segment (noise that passes webrtcvad and the gate; ms). None: only end_hangover_ms ends a segment.")

    @model_validator(mode="after")
    def _check(self) -> VadConfig:
        if self.max_segment_s * 1000 < self.frame_ms * 2:
            raise ValueError(f"max_segment_s ({self.max_segment_s}) must hold at least two frames of "
                             f"{self.frame_ms} ms")
        return self


class EnergyGate:
    """Running frame-energy threshold: ``above_floor_db`` over the noise floor and at least the speech level less
    ``below_speech_db``, both percentiles of the last ``window_frames`` frame energies (dBFS)."""

    FLOOR_PERCENTILE = 10.0
    SPEECH_PERCENTILE = 90.0
    UPDATE_EVERY = 8  # frames between threshold updates
    SILENCE_DB = -90.0  # frames quieter than this (dBFS) are digital silence

    def __init__(self, above_floor_db: float, below_speech_db: float, window_frames: int) -> None:
        self.above_floor_db = above_floor_db
        self.below_speech_db = below_speech_db
        self._energies = np.zeros(max(1, window_frames))
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._threshold = -math.inf

    @property
    def threshold_db(self) -> float:
        return self._threshold

    def admits(self, frame: np.ndarray) -> bool:
        """Record the frame's energy; whether it clears the threshold (the first frames always do). Digital
        silence (below ``SILENCE_DB``) is never speech and is left out of the statistics: zero padding in a file
        would otherwise drag the noise floor far under the real background."""
        db = 10.0 * math.log10(float(np.mean(np.square(frame, dtype=np.float64))) + 1e-12)
        if db < self.SILENCE_DB:
            return False
        self._energies[self._n % self._energies.size] = db
        self._n += 1
        if self._n % self.UPDATE_EVERY == 1 or self._n <= self.UPDATE_EVERY:
            recent = self._energies[: min(self._n, self._energies.size)]
            floor, speech = np.percentile(recent, [self.FLOOR_PERCENTILE, self.SPEECH_PERCENTILE])
            self._threshold = max(floor + self.above_floor_db, speech - self.below_speech_db)
        return db >= self._threshold


def voicing(frame: np.ndarray) -> float:
    """Peak normalised autocorrelation of ``frame`` over pitch lags of 2.5-20 ms (50-400 Hz): near 1 for a
    periodic (voiced) waveform, near 0 for noise."""
    x = np.asarray(frame, dtype=np.float64)
    x = x - x.mean()
    n = x.size
    lo, hi = SAMPLE_RATE // 400, min(SAMPLE_RATE // 50, n - 1)
    if hi <= lo:
        return 0.0
    spectrum = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[:hi]
    if ac[0] <= 0:
        return 0.0
    lags = np.arange(lo, hi)
    return float(np.max(ac[lo:hi] / ac[0] * n / (n - lags)))


def _frames_for(ms: int, frame_ms: int) -> int:
    return max(1, math.ceil(ms / frame_ms))


class Segmenter:
    """Cuts one stream's audio into speech segments (see the module docstring)."""

    def __init__(self, stream_id: str, config: VadConfig | None = None) -> None:
        self.stream_id = stream_id
        self.config = config or VadConfig()
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self._frame = self.config.frame_ms * SAMPLE_RATE // 1000
        self._start_frames = _frames_for(self.config.start_hangover_ms, self.config.frame_ms)
        self._end_frames = _frames_for(self.config.end_hangover_ms, self.config.frame_ms)
        self._pre_roll_frames = math.ceil(self.config.pre_roll_ms / self.config.frame_ms)
        self._voiced_frames = math.ceil(self.config.min_voiced_ms / self.config.frame_ms)
        self._max_unvoiced = (None if self.config.max_unvoiced_ms is None
                              else _frames_for(self.config.max_unvoiced_ms, self.config.frame_ms))
        self._max_segment = round(self.config.max_segment_s * SAMPLE_RATE)
        self._next_segment_id = 0  # keeps counting across reset(): segment ids stay unique per stream
        c = self.config
        self._gate = None if c.gate_above_floor_db is None else EnergyGate(
            c.gate_above_floor_db, c.gate_below_speech_db, round(c.gate_window_s * 1000 / c.frame_ms))
        self.reset()

    def reset(self) -> None:
        """Forget all audio state (open segment, buffered samples, time base); segment ids keep counting."""
        self._origin: float | None = None  # stream time of sample index 0 of the current frame grid
        self._n_in = 0  # samples received since the origin
        self._pending = np.zeros(0, dtype=np.float32)  # the start of an incomplete frame
        self._history: deque[tuple[int, np.ndarray]] = deque(maxlen=self._start_frames + self._pre_roll_frames)
        self._run = 0  # consecutive speech frames outside a segment
        self._run_voiced = 0  # voiced frames in that run
        self._unvoiced = 0  # speech frames since the open segment's last voiced one
        self._segment: int | None = None  # id of the open segment
        self._seg_start = 0  # sample index where the open segment starts
        self._emitted_end = 0  # sample index just after the last emitted speech sample
        self._held: list[tuple[int, np.ndarray]] = []  # non-speech frames inside a segment, not yet emitted
        self._chunk: list[np.ndarray] = []  # speech samples of this call not yet wrapped in an AudioBlock
        self._chunk_start = 0
        if self._gate is not None:
            self._gate.reset()

    @property
    def in_speech(self) -> bool:
        """Whether a segment is open."""
        return self._segment is not None

    def push(self, block: AudioBlock) -> list[SpeechBoundary | AudioBlock]:
        """Feed one block; return the boundaries and speech audio it completes, in time order."""
        if block.stream_id != self.stream_id:
            raise ValueError(f"segmenter for stream {self.stream_id!r} got a block of stream {block.stream_id!r}")
        samples = np.asarray(block.samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"stream {self.stream_id!r}: expected mono samples, got shape {samples.shape}")
        out: list[SpeechBoundary | AudioBlock] = []
        if self._origin is None:
            self._origin = block.t0
        elif abs(block.t0 - self._t(self._n_in)) > GAP_TOLERANCE_S:
            log.debug("stream %s: block at %.3f s does not continue the stream at %.3f s; restarting the VAD",
                      self.stream_id, block.t0, self._t(self._n_in))
            out += self.flush()
            self.reset()
            self._origin = block.t0
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        first = self._n_in - self._pending.size  # sample index of data[0]
        n_frames = data.size // self._frame
        for k in range(n_frames):
            frame = data[k * self._frame:(k + 1) * self._frame]
            self._step(first + k * self._frame, frame, self._is_speech(frame), out)
        self._pending = data[n_frames * self._frame:].copy()
        self._n_in += samples.size
        self._close_chunk(out)
        return out

    def flush(self) -> list[SpeechBoundary | AudioBlock]:
        """Close the open segment (end of stream); held non-speech and a partial frame are dropped."""
        out: list[SpeechBoundary | AudioBlock] = []
        if self._segment is not None:
            self._close_segment(out)
        self._close_chunk(out)
        return out

    def _t(self, index: int) -> float:
        assert self._origin is not None
        return self._origin + index / SAMPLE_RATE

    def _is_speech(self, frame: np.ndarray) -> bool:
        loud_enough = self._gate is None or self._gate.admits(frame)
        pcm = np.clip(frame * 32768.0, -32768, 32767).astype("<i2").tobytes()
        return self._vad.is_speech(pcm, SAMPLE_RATE) and loud_enough

    def _step(self, index: int, frame: np.ndarray, speech: bool, out: list[SpeechBoundary | AudioBlock]) -> None:
        if self._segment is None:
            self._history.append((index, frame))
            self._run = self._run + 1 if speech else 0
            if not speech:
                self._run_voiced = 0
            elif self._run_voiced < self._voiced_frames and voicing(frame) >= self.config.voicing_threshold:
                self._run_voiced += 1
            if self._run >= self._start_frames and self._run_voiced >= self._voiced_frames:
                run_start = index - (self._run - 1) * self._frame
                start = run_start - self._pre_roll_frames * self._frame
                frames = [(i, f) for i, f in self._history if i >= start]
                self._open_segment(frames[0][0], out)
                for i, f in frames:
                    self._emit(i, f, out)
                self._history.clear()
                self._run = 0
                self._run_voiced = 0
            return
        if speech and self._max_unvoiced is not None:
            self._unvoiced = 0 if voicing(frame) >= self.config.voicing_threshold else self._unvoiced + 1
            if self._unvoiced > self._max_unvoiced:  # noise, not speech: the utterance ended before it
                self._close_segment(out)
                return
        if speech:
            for i, f in self._held:
                self._emit(i, f, out)
            self._held.clear()
            self._emit(index, frame, out)
            return
        self._held.append((index, frame))
        if len(self._held) >= self._end_frames:
            self._close_segment(out)

    def _open_segment(self, start: int, out: list[SpeechBoundary | AudioBlock]) -> None:
        self._close_chunk(out)
        self._segment = self._next_segment_id
        self._next_segment_id += 1
        self._unvoiced = 0
        self._seg_start = start
        self._emitted_end = start
        out.append(SpeechBoundary(self.stream_id, "start", self._t(start), self._segment))

    def _close_segment(self, out: list[SpeechBoundary | AudioBlock]) -> None:
        assert self._segment is not None
        self._close_chunk(out)
        out.append(SpeechBoundary(self.stream_id, "end", self._t(self._emitted_end), self._segment))
        self._segment = None
        self._history.extend(self._held)  # the dropped silence may serve as the next segment's pre-roll
        self._held.clear()
        self._run = 0
        self._run_voiced = 0

    def _emit(self, index: int, frame: np.ndarray, out: list[SpeechBoundary | AudioBlock]) -> None:
        """Add one frame of the open segment to the output, splitting at ``max_segment_s``."""
        assert self._segment is not None
        if index + frame.size - self._seg_start > self._max_segment and index > self._seg_start:
            self._close_chunk(out)
            out.append(SpeechBoundary(self.stream_id, "end", self._t(index), self._segment))
            self._open_segment(index, out)
        if not self._chunk:
            self._chunk_start = index
        self._chunk.append(frame)
        self._emitted_end = index + frame.size

    def _close_chunk(self, out: list[SpeechBoundary | AudioBlock]) -> None:
        if self._chunk:
            samples = np.concatenate(self._chunk) if len(self._chunk) > 1 else self._chunk[0].copy()
            out.append(AudioBlock(self.stream_id, self._t(self._chunk_start), samples))
            self._chunk = []
