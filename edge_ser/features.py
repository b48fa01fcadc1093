"""Whisper log-mel features in numpy: the one feature module shared by the trainer and the runtime.

It reproduces Whisper's ``log_mel_spectrogram`` (80 mel bins, 25 ms Hann window, 10 ms hop, log10,
dynamic range clamped to 8, scaled by ``(x + 4) / 4``) at the audio's *actual* length: no padding to 30 s.
One mel frame per 10 ms; the encoder turns two mel frames into one 20 ms output frame.

A model trained with ``FeatureParams.trim_db`` set sees its input without quiet edges: leading and trailing
20 ms frames more than ``trim_db`` below the input's loudest one are cut before the spectrogram
(:func:`trim_quiet_edges`), in training, in evaluation and in every window the agent scores, so that no
model can learn what a corpus's leading or trailing silence looks like (the clip protocol's inputs carry it,
the agent's VAD-cut windows do not).

A model trained with ``FeatureParams.level_db`` set sees every input at the same loudness: the input is scaled
so that its loud frames (the 95th percentile of its 20 ms frame energies) sit at ``level_db`` dBFS
(:func:`normalize_level`), again in training, evaluation and every window the agent scores. Recording level
depends on the microphone, its gain and the distance to it as well as on the speaker, and corpora disagree
on it: some are peak-normalised clip by clip, others keep nearly 20 dB between shouted and calm takes
(docs/training.md; docs/ablations.md measured what removing it costs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from edge_ser.types import SAMPLE_RATE

LEVEL_DB_RANGE = (-60.0, -3.0)
"""The loudness targets ``FeatureParams.level_db`` accepts, in dBFS."""

LEVEL_PERCENTILE = 95.0
"""The frame-energy percentile that ``normalize_level`` brings to the target: the input's loud frames."""


@dataclass(frozen=True, slots=True)
class FeatureParams:
    """What the model was trained on; stored in every checkpoint so the runtime never guesses."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    trim_db: float | None = None
    """Cut leading / trailing 20 ms frames this many dB below the loudest (None: keep the input whole)."""
    level_db: float | None = None
    """Scale each input so its loud frames sit at this many dBFS, -60 to -3 (None: keep the input's level)."""

    def __post_init__(self) -> None:
        if self.trim_db is not None and not self.trim_db > 0:
            raise ValueError(f"feature params: trim_db must be > 0 dB or None, got {self.trim_db!r}")
        if self.level_db is not None and not LEVEL_DB_RANGE[0] <= self.level_db <= LEVEL_DB_RANGE[1]:
            raise ValueError(f"feature params: level_db must be between {LEVEL_DB_RANGE[0]} and "
                             f"{LEVEL_DB_RANGE[1]} dBFS or None, got {self.level_db!r}")

    def to_dict(self) -> dict[str, int | float]:
        """As stored in checkpoints and cache keys; ``trim_db`` and ``level_db`` only when set, so older keys
        stay valid."""
        return {k: v for k, v in asdict(self).items() if v is not None}


DEFAULT_PARAMS = FeatureParams()


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mels = freq / f_sp
    above = freq >= min_log_hz
    mels[above] = min_log_mel + np.log(freq[above] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    freqs = f_sp * mels
    above = mels >= min_log_mel
    freqs[above] = min_log_hz * np.exp(logstep * (mels[above] - min_log_mel))
    return freqs


@lru_cache(maxsize=4)
def mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = 400, n_mels: int = 80) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, shape (n_mels, n_fft // 2 + 1), float32.

    Matches ``librosa.filters.mel(sr, n_fft, n_mels)`` (htk=False, norm="slaney"), which Whisper ships.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0],
                                        _hz_to_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2))
    fdiff = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=4)
def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(n_fft)``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float64)


def n_frames(n_samples: int, params: FeatureParams = DEFAULT_PARAMS) -> int:
    """Number of mel frames ``log_mel`` returns for ``n_samples`` samples (one per hop)."""
    return n_samples // params.hop_length


TRIM_FRAME = 320
"""Samples per trimming frame: 20 ms, one encoder output frame."""


def _frame_energies(audio: np.ndarray) -> np.ndarray:
    """Sum of squares (float64) of each whole 20 ms frame of ``audio``, counted from the first sample."""
    count = len(audio) // TRIM_FRAME
    frames = audio[: count * TRIM_FRAME].astype(np.float64).reshape(count, TRIM_FRAME)
    return np.einsum("ij,ij->i", frames, frames)


def trim_quiet_edges(audio: np.ndarray, trim_db: float) -> np.ndarray:
    """``audio`` without its leading and trailing 20 ms frames whose energy is more than ``trim_db`` below the
    loudest frame's. Frames are counted from the first sample, so a multiple of 320 samples stays one; at
    least two frames (40 ms) are kept; digital silence throughout is returned unchanged."""
    count = len(audio) // TRIM_FRAME
    if count <= 2:
        return audio
    energy = _frame_energies(audio)
    peak = float(energy.max())
    if peak <= 0.0:
        return audio
    loud = np.flatnonzero(energy >= peak * 10.0 ** (-trim_db / 10.0))
    first, last = int(loud[0]), int(loud[-1]) + 1
    if last - first < 2:  # one loud frame: keep its neighbour too
        first, last = (first, first + 2) if first + 2 <= count else (count - 2, count)
    end = len(audio) if last == count else last * TRIM_FRAME
    return audio[first * TRIM_FRAME : end]


def loud_level_db(audio: np.ndarray) -> float | None:
    """The level of ``audio``'s loud frames in dBFS: the 95th percentile of its 20 ms frame energies (mean
    square; the whole input when it is shorter than a frame). None for digital silence."""
    if len(audio) >= TRIM_FRAME:
        energy = _frame_energies(audio) / TRIM_FRAME
    else:
        energy = np.array([np.mean(np.square(audio, dtype=np.float64))])
    loud = float(np.percentile(energy, LEVEL_PERCENTILE))
    return 10.0 * np.log10(loud) if loud > 0.0 else None


def normalize_level(audio: np.ndarray, level_db: float) -> np.ndarray:
    """``audio`` scaled so that :func:`loud_level_db` of the result is ``level_db``; digital silence is returned
    unchanged. Float64; samples may exceed 1.0 (the spectrogram does not clip)."""
    level = loud_level_db(audio)
    if level is None:
        return audio
    return audio.astype(np.float64) * 10.0 ** ((level_db - level) / 20.0)


def log_mel(audio: np.ndarray, params: FeatureParams = DEFAULT_PARAMS) -> np.ndarray:
    """Whisper log-mel spectrogram of 16 kHz mono audio, shape (n_mels, len(audio) // hop), float32; with
    ``params.trim_db`` set, of the audio without its quiet edges (:func:`trim_quiet_edges`), so fewer frames;
    with ``params.level_db`` set, of the (trimmed) audio brought to that loudness (:func:`normalize_level`).

    Raises ValueError for audio that is not 1-D, shorter than one FFT window, or not finite.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"log_mel expects 1-D mono audio, got shape {audio.shape}")
    if len(audio) < params.n_fft:
        raise ValueError(f"log_mel needs at least {params.n_fft} samples, got {len(audio)}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("log_mel got NaN or infinite samples")
    if params.trim_db is not None:
        audio = trim_quiet_edges(audio, params.trim_db)
    if params.level_db is not None:
        audio = normalize_level(audio, params.level_db)
    x = audio.astype(np.float64, copy=False)
    half = params.n_fft // 2
    padded = np.pad(x, (half, half), mode="reflect")
    count = n_frames(len(x), params)  # Whisper drops the last STFT frame
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(count, params.n_fft),
        strides=(padded.strides[0] * params.hop_length, padded.strides[0]),
        writeable=False,
    )
    spectrum = np.fft.rfft(frames * _hann(params.n_fft), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = mel_filters(params.sample_rate, params.n_fft, params.n_mels) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def encoder_frames(n_samples: int, params: FeatureParams = DEFAULT_PARAMS) -> int:
    """Encoder output frames (20 ms each) that carry audio for ``n_samples`` samples: ``n // 160 // 2``."""
    return n_frames(n_samples, params) // 2
