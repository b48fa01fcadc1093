"""Whisper log-mel features in numpy: the one feature module shared by the trainer and the runtime.

It reproduces Whisper's ``log_mel_spectrogram`` (80 mel bins, 25 ms Hann window, 10 ms hop, log10,
dynamic range clamped to 8, scaled by ``(x + 4) / 4``) at the audio's *actual* length: no padding to 30 s.
One mel frame per 10 ms; the encoder turns two mel frames into one 20 ms output frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from edge_ser.types import SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class FeatureParams:
    """What the model was trained on; stored in every checkpoint so the runtime never guesses."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


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


def log_mel(audio: np.ndarray, params: FeatureParams = DEFAULT_PARAMS) -> np.ndarray:
    """Whisper log-mel spectrogram of 16 kHz mono audio, shape (n_mels, len(audio) // hop), float32.

    Raises ValueError for audio that is not 1-D, shorter than one FFT window, or not finite.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"log_mel expects 1-D mono audio, got shape {audio.shape}")
    if len(audio) < params.n_fft:
        raise ValueError(f"log_mel needs at least {params.n_fft} samples, got {len(audio)}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("log_mel got NaN or infinite samples")
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
