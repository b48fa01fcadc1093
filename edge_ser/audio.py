"""Decode audio files and convert any PCM to the pipeline's format: 16 kHz mono float32 in [-1, 1].

``load_audio`` decodes a whole file (WAV, FLAC, Ogg/Opus, Ogg/Vorbis through libsndfile) and checks it;
``iter_audio_blocks`` streams a file in fixed-size 16 kHz blocks without decoding it all into memory (the
file replay source); ``to_mono_16k`` and ``MonoResampler`` convert arrays and live streams. Every problem
with a file raises ``AudioError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edge_ser.types import SAMPLE_RATE

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 4_000
"""Lowest native sample rate accepted (Hz); anything lower is a broken header, not speech audio."""

MAX_SAMPLE_RATE = 384_000
"""Highest native sample rate accepted (Hz)."""

CLIP_LEVEL = 0.999
"""Samples whose magnitude reaches this level count as clipped."""

CLIP_WARN_FRACTION = 0.001
"""Warn about clipping when at least this fraction of the samples is clipped."""

DEFAULT_MAX_SECONDS = 3600.0
"""``load_audio`` refuses longer files by default (one hour is 230 MB of float32 at 16 kHz)."""


class AudioError(ValueError):
    """A file or buffer that cannot be used as audio; the message names the file and the problem."""


def to_float32(data: np.ndarray, name: str = "audio") -> np.ndarray:
    """Scale integer PCM to float32 in [-1, 1] (int16, int32, uint8); float input is only cast."""
    if data.dtype == np.float32:
        return data
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32)
    if data.dtype == np.int16:
        return data.astype(np.float32) / 32768.0
    if data.dtype == np.int32:
        return (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    raise AudioError(f"{name}: unsupported sample type {data.dtype}; expected int16, int32, uint8 or float")


def downmix(data: np.ndarray, name: str = "audio") -> np.ndarray:
    """Mono float32 from ``(frames,)`` or ``(frames, channels)`` PCM, averaging the channels."""
    samples = to_float32(np.asarray(data), name)
    if samples.ndim == 1:
        return samples
    if samples.ndim == 2:
        if samples.shape[1] == 1:
            return samples[:, 0]
        return samples.mean(axis=1, dtype=np.float32)
    raise AudioError(f"{name}: expected (frames,) or (frames, channels) samples, got shape {samples.shape}")


def check_sample_rate(sample_rate: int, name: str = "audio") -> None:
    """Raise ``AudioError`` unless ``sample_rate`` is within [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {sample_rate} Hz is not plausible; expected "
                         f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")


def check_finite(samples: np.ndarray, name: str = "audio") -> None:
    """Raise ``AudioError`` (with counts) if any sample is NaN or infinite."""
    finite = np.isfinite(samples)
    if not finite.all():
        n_nan = int(np.isnan(samples).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise AudioError(f"{name}: {n_nan} NaN and {n_inf} infinite sample(s) out of {samples.size}; "
                         "expected finite samples")


def warn_if_clipped(samples: np.ndarray, name: str = "audio") -> float:
    """Log a warning when at least CLIP_WARN_FRACTION of the samples is clipped; return the fraction."""
    if samples.size == 0:
        return 0.0
    fraction = float(np.count_nonzero(np.abs(samples) >= CLIP_LEVEL)) / samples.size
    if fraction >= CLIP_WARN_FRACTION:
        log.warning("%s: %.2f%% of the samples are clipped (|x| >= %.3f)", name, 100 * fraction, CLIP_LEVEL)
    return fraction


def to_mono_16k(data: np.ndarray, sample_rate: int) -> np.ndarray:
    """Downmix ``(frames,)`` / ``(frames, channels)`` int16/int32/float PCM by mean and resample to 16 kHz."""
    check_sample_rate(sample_rate)
    mono = downmix(data)
    if sample_rate == SAMPLE_RATE or mono.size == 0:
        return np.ascontiguousarray(mono, dtype=np.float32)
    return soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)


class MonoResampler:
    """Incremental resampler for a live mono float32 stream (soxr.ResampleStream; identity at 16 kHz)."""

    def __init__(self, in_rate: int) -> None:
        check_sample_rate(in_rate)
        self.in_rate = in_rate
        self._stream = None if in_rate == SAMPLE_RATE else soxr.ResampleStream(
            in_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk; ``last=True`` once at the end flushes what soxr holds back."""
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=last)


def _open(path: Path) -> sf.SoundFile:
    name = str(path)
    if not path.exists():
        raise AudioError(f"{name}: file not found")
    if not path.is_file():
        raise AudioError(f"{name}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{name}: file is empty (0 bytes)")
    try:
        handle = sf.SoundFile(name)
    except (sf.SoundFileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{name}: cannot decode ({exc}); expected WAV, FLAC, Ogg/Opus or Ogg/Vorbis") from exc
    try:
        check_sample_rate(handle.samplerate, name)
        if handle.channels < 1:
            raise AudioError(f"{name}: header says {handle.channels} channels; expected at least 1")
    except AudioError:
        handle.close()
        raise
    return handle


def describe_file(path: str | Path) -> dict[str, object]:
    """Native format of an audio file (sample rate, channels, frames, duration, format); checks it opens."""
    path = Path(path)
    with _open(path) as handle:
        frames = handle.frames
        return {"path": str(path), "sample_rate": handle.samplerate, "channels": handle.channels,
                "frames": frames, "duration_s": frames / handle.samplerate,
                "format": f"{handle.format}/{handle.subtype}"}


def load_audio(path: str | Path, max_seconds: float | None = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """Decode a whole file to 16 kHz mono float32; raise ``AudioError`` naming the file on any problem.

    ``max_seconds`` refuses files longer than that before decoding them (``None``: no limit); use
    ``iter_audio_blocks`` for long recordings.
    """
    path = Path(path)
    name = str(path)
    with _open(path) as handle:
        rate = handle.samplerate
        if max_seconds is not None and handle.frames > max_seconds * rate:
            raise AudioError(f"{name}: {handle.frames / rate:.1f} s long; load_audio accepts at most "
                             f"{max_seconds:.1f} s (stream it with iter_audio_blocks instead)")
        try:
            data = handle.read(dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as exc:
            raise AudioError(f"{name}: decoding failed ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples")
    check_finite(data, name)
    warn_if_clipped(data, name)
    return to_mono_16k(data, rate)


def _seek(handle: sf.SoundFile, frame: int, name: str, start_s: float) -> None:
    """Position ``handle`` at ``frame``: a seek where the format allows it, else read and discard."""
    if handle.frames > 0 and frame >= handle.frames:
        raise AudioError(f"{name}: start_s {start_s:g} s is past the end of the file "
                         f"({handle.frames / handle.samplerate:.2f} s)")
    try:
        if handle.seekable():
            handle.seek(frame)
            return
    except (sf.SoundFileError, RuntimeError):
        pass
    left = frame
    while left > 0:
        skipped = handle.read(min(left, 1 << 16), dtype="float32", always_2d=True).shape[0]
        if skipped == 0:
            raise AudioError(f"{name}: start_s {start_s:g} s is past the end of the file")
        left -= skipped


def iter_audio_blocks(path: str | Path, block_s: float = 0.1, start_s: float = 0.0) -> Iterator[np.ndarray]:
    """Stream a file as 16 kHz mono float32 blocks of ``round(block_s * 16000)`` samples (the last shorter),
    from ``start_s`` seconds in (a seek, not a decode of what comes before, where the format allows it).

    The file is read ``block_s`` at a time and resampled incrementally, so memory does not grow with its
    length. Raises ``AudioError`` (naming the file) when it cannot be opened, is empty, holds NaN/inf, or
    ends before ``start_s``.
    """
    if block_s <= 0:
        raise ValueError(f"block_s must be > 0 seconds, got {block_s}")
    path = Path(path)
    name = str(path)
    block_samples = max(1, round(block_s * SAMPLE_RATE))
    with _open(path) as handle:
        if start_s > 0:
            _seek(handle, round(start_s * handle.samplerate), name, start_s)
        resampler = MonoResampler(handle.samplerate)
        read_frames = max(1, round(block_s * handle.samplerate))
        pending = np.zeros(0, dtype=np.float32)
        total_in = 0
        clipped = 0
        while True:
            try:
                data = handle.read(read_frames, dtype="float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError) as exc:
                raise AudioError(f"{name}: decoding failed after {total_in} frames ({exc})") from exc
            last = data.shape[0] < read_frames
            if data.shape[0]:
                check_finite(data, f"{name} (frames {total_in}-{total_in + data.shape[0]})")
                clipped += int(np.count_nonzero(np.abs(data) >= CLIP_LEVEL))
                total_in += data.shape[0]
            elif total_in == 0:
                raise AudioError(f"{name}: contains no audio samples" + (f" after start_s {start_s:g} s"
                                                                          if start_s > 0 else ""))
            out = resampler.process(downmix(data, name), last=last)
            pending = np.concatenate([pending, out]) if pending.size else out
            while pending.size >= block_samples:
                yield pending[:block_samples]
                pending = pending[block_samples:]
            if last:
                break
        if pending.size:
            yield pending
        if total_in and clipped / (total_in * handle.channels) >= CLIP_WARN_FRACTION:
            log.warning("%s: %.2f%% of the samples are clipped (|x| >= %.3f)", name,
                        100 * clipped / (total_in * handle.channels), CLIP_LEVEL)
