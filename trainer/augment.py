"""Waveform and log-mel augmentations of paper 1, seeded and reproducible.

Each waveform augmentation is applied with its own probability (0.2 by default), independently: polarity
inversion, gain, time reversal, additive noise (white, pink, or babble made of other clips) at a random SNR,
resampling (speed and pitch together), a random equaliser (biquad peaking and shelving filters) and
echo/reverb (a synthetic exponentially decaying impulse response with an optional discrete echo).
SpecAugment (time and frequency masks) works on the log-mel. Every function takes the random generator it
draws from, so the same seed gives the same output.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import soxr
from pydantic import BaseModel, ConfigDict, Field
from scipy.signal import fftconvolve, sosfilt

from edge_ser.types import SAMPLE_RATE

log = logging.getLogger(__name__)


class AugmentConfig(BaseModel):
    """Probabilities and ranges of the on-the-fly augmentations."""

    model_config = ConfigDict(extra="forbid")
    p_polarity: float = Field(0.2, ge=0, le=1, description="Probability of polarity inversion.")
    p_gain: float = Field(0.2, ge=0, le=1, description="Probability of a gain change.")
    gain_db: tuple[float, float] = Field((-6.0, 6.0), description="Gain range in dB.")
    p_reverse: float = Field(0.2, ge=0, le=1, description="Probability of time reversal.")
    p_noise: float = Field(0.2, ge=0, le=1, description="Probability of additive noise.")
    noise_types: list[str] = Field(default_factory=lambda: ["white", "pink", "babble"],
                                   description="Noise kinds drawn uniformly: white, pink, babble.")
    snr_db: tuple[float, float] = Field((5.0, 30.0), description="SNR range of additive noise, dB.")
    babble_speakers: tuple[int, int] = Field((3, 6), description="How many other clips make one babble.")
    p_speed: float = Field(0.2, ge=0, le=1, description="Probability of resampling (speed and pitch).")
    speed: tuple[float, float] = Field((0.9, 1.1), description="Speed factor range (>1 is faster, shorter).")
    p_eq: float = Field(0.2, ge=0, le=1, description="Probability of a random equaliser.")
    eq_bands: tuple[int, int] = Field((1, 3), description="Number of biquad filters in the equaliser.")
    eq_gain_db: tuple[float, float] = Field((-12.0, 12.0), description="Gain range of each biquad, dB.")
    p_reverb: float = Field(0.2, ge=0, le=1, description="Probability of echo/reverb.")
    rt60_s: tuple[float, float] = Field((0.1, 0.6), description="Reverberation time range, seconds.")
    echo_delay_s: tuple[float, float] = Field((0.05, 0.25), description="Delay range of the discrete echo.")
    p_specaugment: float = Field(0.2, ge=0, le=1, description="Probability of SpecAugment on the log-mel.")
    time_masks: int = Field(2, ge=0, description="SpecAugment time masks.")
    time_mask_frac: float = Field(0.1, ge=0, le=0.5, description="Widest time mask as a share of frames.")
    freq_masks: int = Field(2, ge=0, description="SpecAugment frequency masks.")
    freq_mask_bins: int = Field(10, ge=0, description="Widest frequency mask in mel bins.")

    def any_enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in type(self).model_fields if name.startswith("p_"))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def polarity(x: np.ndarray) -> np.ndarray:
    return -x


def gain(x: np.ndarray, db: float) -> np.ndarray:
    return x * np.float32(10.0 ** (db / 20.0))


def reverse(x: np.ndarray) -> np.ndarray:
    return x[::-1].copy()


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain by 1/sqrt(f)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(freqs), n)


def babble_noise(n: int, rng: np.random.Generator, pool: Sequence[np.ndarray], speakers: int) -> np.ndarray:
    """Sum of ``speakers`` random clips from ``pool``, each looped or cropped to ``n`` and scaled to unit RMS."""
    out = np.zeros(n, dtype=np.float64)
    for _ in range(speakers):
        clip = pool[int(rng.integers(len(pool)))]
        if len(clip) < n:
            clip = np.tile(clip, -(-n // len(clip)))
        start = int(rng.integers(len(clip) - n + 1))
        piece = clip[start : start + n].astype(np.float64)
        out += piece / rms(piece)
    return out


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x`` plus ``noise`` scaled so that 10 log10(P_x / P_noise) equals ``snr_db``."""
    scale = rms(x) / (rms(noise) * 10.0 ** (snr_db / 20.0))
    return (x + scale * noise).astype(np.float32)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Resample so the clip plays ``factor`` times faster (shorter, higher pitch) at the same sample rate."""
    return np.asarray(soxr.resample(x.astype(np.float32), SAMPLE_RATE, SAMPLE_RATE / factor), dtype=np.float32)


def biquad(kind: str, f0: float, gain_db: float, q: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One second-order section (RBJ audio EQ cookbook): ``peaking``, ``lowshelf`` or ``highshelf``."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * f0 / sr
    cos_w, alpha = np.cos(w0), np.sin(w0) / (2.0 * q)
    if kind == "peaking":
        b = [1 + alpha * a, -2 * cos_w, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cos_w, 1 - alpha / a]
    elif kind in ("lowshelf", "highshelf"):
        sign = 1.0 if kind == "lowshelf" else -1.0
        sq = 2.0 * np.sqrt(a) * alpha
        b = [a * ((a + 1) - sign * (a - 1) * cos_w + sq), sign * 2 * a * ((a - 1) - sign * (a + 1) * cos_w),
             a * ((a + 1) - sign * (a - 1) * cos_w - sq)]
        den = [(a + 1) + sign * (a - 1) * cos_w + sq, -sign * 2 * ((a - 1) + sign * (a + 1) * cos_w),
               (a + 1) + sign * (a - 1) * cos_w - sq]
    else:
        raise ValueError(f"biquad kind must be peaking, lowshelf or highshelf, got {kind!r}")
    return np.array([b[0], b[1], b[2], den[0], den[1], den[2]]) / den[0]


def equalize(x: np.ndarray, sections: Sequence[np.ndarray]) -> np.ndarray:
    return sosfilt(np.stack(sections), x.astype(np.float64)).astype(np.float32)


def random_eq_sections(rng: np.random.Generator, config: AugmentConfig) -> list[np.ndarray]:
    count = int(rng.integers(config.eq_bands[0], config.eq_bands[1] + 1))
    sections = []
    for _ in range(count):
        kind = str(rng.choice(["peaking", "lowshelf", "highshelf"]))
        f0 = float(np.exp(rng.uniform(np.log(100.0), np.log(6000.0))))
        sections.append(biquad(kind, f0, float(rng.uniform(*config.eq_gain_db)), float(rng.uniform(0.5, 2.0))))
    return sections


def impulse_response(rng: np.random.Generator, rt60: float, echo_delay: float | None, echo_gain: float,
                     sr: int = SAMPLE_RATE) -> np.ndarray:
    """Direct path + exponentially decaying noise tail (-60 dB at ``rt60``) + an optional discrete echo."""
    n = max(int(rt60 * sr), 1)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.1
    ir = tail
    ir[0] = 1.0
    if echo_delay is not None:
        d = int(echo_delay * sr)
        if d >= len(ir):
            ir = np.pad(ir, (0, d - len(ir) + 1))
        ir[d] += echo_gain
    return ir


def reverb(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """Convolve with ``ir``, keep the input length, and restore the input's RMS."""
    wet = fftconvolve(x.astype(np.float64), ir)[: len(x)]
    return (wet * (rms(x) / rms(wet))).astype(np.float32)


def spec_augment(mel: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Time and frequency masks on a (n_mels, frames) log-mel, filled with the spectrogram's mean."""
    out = mel.copy()
    fill = float(mel.mean())
    n_mels, frames = mel.shape
    widest_t = max(int(config.time_mask_frac * frames), 1)
    for _ in range(config.time_masks):
        width = int(rng.integers(1, widest_t + 1))
        start = int(rng.integers(0, max(frames - width, 0) + 1))
        out[:, start : start + width] = fill
    for _ in range(config.freq_masks):
        width = int(rng.integers(1, max(config.freq_mask_bins, 1) + 1))
        start = int(rng.integers(0, max(n_mels - width, 0) + 1))
        out[start : start + width, :] = fill
    return out


class Augmenter:
    """Draws and applies the waveform augmentations of one view; ``babble_pool`` holds other clips' audio."""

    def __init__(self, config: AugmentConfig, babble_pool: Sequence[np.ndarray] = ()) -> None:
        self.config = config
        self.babble_pool = [c for c in babble_pool if len(c) > 0]

    def waveform(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """One augmented copy of ``x`` (float32, peak <= 1) and the names of what was applied, in order."""
        c = self.config
        y = np.asarray(x, dtype=np.float32)
        applied: list[str] = []
        if rng.random() < c.p_polarity:
            y = polarity(y)
            applied.append("polarity")
        if rng.random() < c.p_gain:
            y = gain(y, float(rng.uniform(*c.gain_db)))
            applied.append("gain")
        if rng.random() < c.p_reverse:
            y = reverse(y)
            applied.append("reverse")
        if rng.random() < c.p_speed:
            y = change_speed(y, float(rng.uniform(*c.speed)))
            applied.append("speed")
        if rng.random() < c.p_eq:
            y = equalize(y, random_eq_sections(rng, c))
            applied.append("eq")
        if rng.random() < c.p_reverb:
            echo = float(rng.uniform(*c.echo_delay_s)) if rng.random() < 0.5 else None
            ir = impulse_response(rng, float(rng.uniform(*c.rt60_s)), echo, float(rng.uniform(0.2, 0.6)))
            y = reverb(y, ir)
            applied.append("reverb")
        if rng.random() < c.p_noise and c.noise_types:
            kind = str(rng.choice(c.noise_types))
            if kind == "babble" and not self.babble_pool:
                kind = "pink"
            if kind == "white":
                noise = white_noise(len(y), rng)
            elif kind == "pink":
                noise = pink_noise(len(y), rng)
            elif kind == "babble":
                speakers = int(rng.integers(c.babble_speakers[0], c.babble_speakers[1] + 1))
                noise = babble_noise(len(y), rng, self.babble_pool, speakers)
            else:
                raise ValueError(f"unknown noise type {kind!r}; expected white, pink or babble")
            y = add_noise(y, noise, float(rng.uniform(*c.snr_db)))
            applied.append(f"noise:{kind}")
        peak = float(np.max(np.abs(y))) if len(y) else 0.0
        if peak > 1.0:
            y = y / np.float32(peak / 0.99)
        return y.astype(np.float32, copy=False), applied

    def mel(self, mel: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """SpecAugment with probability ``p_specaugment``; returns the log-mel and whether it was masked."""
        if rng.random() < self.config.p_specaugment:
            return spec_augment(mel, rng, self.config), True
        return mel, False
