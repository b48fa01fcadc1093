"""Each augmentation does what it claims, on a real clip, and the same seed gives the same output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ser.audio import load_audio
from edge_ser.features import log_mel
from trainer.augment import (
    AugmentConfig,
    Augmenter,
    add_noise,
    babble_noise,
    biquad,
    change_speed,
    equalize,
    gain,
    impulse_response,
    pink_noise,
    polarity,
    reverb,
    reverse,
    rms,
    spec_augment,
    white_noise,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = ["emodb/wav/03a01Fa.opus", "ravdess/Actor_01/03-01-05-01-01-01-01.opus"]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    path = DATA / CLIPS[0]
    if not path.is_file():
        pytest.skip(f"corpus clip {path} not available")
    return load_audio(path)


@pytest.fixture(scope="module")
def other_speech() -> list[np.ndarray]:
    paths = [DATA / c for c in CLIPS[1:]]
    if not all(p.is_file() for p in paths):
        pytest.skip("corpus clips not available")
    return [load_audio(p) for p in paths]


def test_polarity_gain_reverse(speech: np.ndarray) -> None:
    assert np.array_equal(polarity(speech), -speech)
    assert rms(gain(speech, 6.0)) / rms(speech) == pytest.approx(10 ** (6 / 20), rel=1e-4)
    backwards = reverse(speech)
    assert backwards.shape == speech.shape
    assert np.array_equal(backwards[::-1], speech)


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
def test_noise_at_the_asked_snr(speech: np.ndarray, other_speech: list[np.ndarray], kind: str) -> None:
    rng = np.random.default_rng(1)
    n = len(speech)
    noise = {"white": lambda: white_noise(n, rng), "pink": lambda: pink_noise(n, rng),
             "babble": lambda: babble_noise(n, rng, other_speech, 3)}[kind]()
    for snr in (5.0, 20.0):
        noisy = add_noise(speech, noise, snr)
        measured = 20 * np.log10(rms(speech) / rms(noisy - speech))
        assert abs(measured - snr) < 1.0


def test_pink_noise_has_falling_spectrum() -> None:
    spectrum = np.abs(np.fft.rfft(pink_noise(16000, np.random.default_rng(0)))) ** 2
    low, high = spectrum[10:100].mean(), spectrum[4000:8000].mean()
    assert low > 20 * high  # ~1/f: 1 decade lower in frequency -> ~10-100x more power


def test_speed_changes_length(speech: np.ndarray) -> None:
    faster = change_speed(speech, 1.1)
    slower = change_speed(speech, 0.9)
    assert len(faster) == pytest.approx(len(speech) / 1.1, abs=2)
    assert len(slower) == pytest.approx(len(speech) / 0.9, abs=2)
    assert faster.dtype == np.float32


def test_eq_changes_the_spectrum_where_asked(speech: np.ndarray) -> None:
    boosted = equalize(speech, [biquad("peaking", 1000.0, 12.0, 1.0)])
    freqs = np.fft.rfftfreq(len(speech), 1 / 16000)
    band = (freqs > 900) & (freqs < 1100)
    far = (freqs > 5000) & (freqs < 7000)
    before, after = np.abs(np.fft.rfft(speech)) ** 2, np.abs(np.fft.rfft(boosted)) ** 2
    gain_band = 10 * np.log10(after[band].sum() / before[band].sum())
    gain_far = 10 * np.log10(after[far].sum() / before[far].sum())
    assert gain_band > 9.0
    assert abs(gain_far) < 1.0
    cut = equalize(speech, [biquad("highshelf", 3000.0, -12.0, 0.7)])
    assert np.abs(np.fft.rfft(cut))[far].sum() < 0.5 * np.abs(np.fft.rfft(speech))[far].sum()


def test_echo_adds_delayed_energy() -> None:
    click = np.zeros(16000, dtype=np.float32)
    click[100] = 1.0
    ir = impulse_response(np.random.default_rng(0), rt60=0.3, echo_delay=0.1, echo_gain=0.5)
    wet = reverb(click, ir)
    assert wet.shape == click.shape
    assert np.sum(wet[:100] ** 2) < 1e-20  # nothing before the sound (FFT round-off only)
    echo = 100 + 1600  # 0.1 s later
    assert abs(wet[echo]) > 0.3 * abs(wet[100])
    assert np.sum(wet[200:] ** 2) > 0.1 * np.sum(wet**2)  # a decaying tail carries energy
    assert rms(wet) == pytest.approx(rms(click), rel=1e-3)


def test_spec_augment_masks_are_constant_bands(speech: np.ndarray) -> None:
    mel = log_mel(speech[: 16000 // 320 * 320])
    config = AugmentConfig(time_masks=1, freq_masks=1, freq_mask_bins=10, time_mask_frac=0.2)
    masked = spec_augment(mel, np.random.default_rng(3), config)
    assert masked.shape == mel.shape
    changed = masked != mel
    fill = float(mel.mean())
    assert changed.any()
    assert np.allclose(masked[changed], fill)
    rows = np.flatnonzero(changed.all(axis=1))
    cols = np.flatnonzero(changed.all(axis=0))
    assert 1 <= len(rows) <= 10 or 1 <= len(cols) <= int(0.2 * mel.shape[1])


def test_augmenter_is_seeded_and_bounded(speech: np.ndarray, other_speech: list[np.ndarray]) -> None:
    every = AugmentConfig(p_polarity=1, p_gain=1, p_reverse=1, p_noise=1, p_speed=1, p_eq=1, p_reverb=1,
                          gain_db=(6.0, 12.0))
    augmenter = Augmenter(every, other_speech)
    a, applied = augmenter.waveform(speech, np.random.default_rng([0, 1, 2]))
    b, _ = augmenter.waveform(speech, np.random.default_rng([0, 1, 2]))
    c, _ = augmenter.waveform(speech, np.random.default_rng([0, 1, 3]))
    assert np.array_equal(a, b)
    assert not np.array_equal(a[: len(c)], c[: len(a)])
    assert applied[:6] == ["polarity", "gain", "reverse", "speed", "eq", "reverb"]
    assert applied[6].startswith("noise:")
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() <= 1.0
    none = Augmenter(AugmentConfig(p_polarity=0, p_gain=0, p_reverse=0, p_noise=0, p_speed=0, p_eq=0, p_reverb=0))
    same, nothing = none.waveform(speech, np.random.default_rng(0))
    assert nothing == [] and np.array_equal(same, speech)
