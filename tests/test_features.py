"""The shared log-mel module against OpenAI Whisper's own filterbank and algorithm, on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_ser.features import encoder_frames, log_mel, mel_filters, n_frames

torch = pytest.importorskip("torch")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIP = DATA / "ravdess" / "Actor_01" / "03-01-05-01-01-01-01.opus"


def whisper_log_mel_reference(audio: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """whisper/audio.py ``log_mel_spectrogram`` (openai-whisper 20250625), no padding."""
    samples = torch.from_numpy(audio)
    stft = torch.stft(samples, 400, 160, window=torch.hann_window(400), return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    log_spec = torch.clamp(torch.from_numpy(filters) @ magnitudes, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def test_mel_filterbank_equals_whispers() -> None:
    reference = np.load(Path(__file__).parent / "data" / "whisper_mel_80.npz")["mel_80"]
    assert mel_filters().shape == reference.shape
    np.testing.assert_allclose(mel_filters(), reference, atol=1e-7)


@pytest.mark.skipif(not CLIP.is_file(), reason=f"corpus clip {CLIP} not available")
def test_log_mel_matches_whisper_on_real_speech() -> None:
    audio, rate = sf.read(CLIP, dtype="float32")
    assert rate == 16_000
    reference = whisper_log_mel_reference(audio, mel_filters())
    ours = log_mel(audio)
    assert ours.shape == reference.shape == (80, len(audio) // 160)
    np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_frame_arithmetic() -> None:
    assert n_frames(32_000) == 200
    assert encoder_frames(32_000) == 100
    assert encoder_frames(16_160) == 50


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros((2, 1600), np.float32), "1-D"),
        (np.zeros(100, np.float32), "at least 400"),
        (np.array([0.0] * 500 + [np.nan] * 10, np.float32), "NaN"),
    ],
)
def test_bad_audio_is_rejected_with_the_reason(audio: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        log_mel(audio)
