"""The shared log-mel module against OpenAI Whisper's own filterbank and algorithm, on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_ser.features import (
    FeatureParams,
    encoder_frames,
    log_mel,
    loud_level_db,
    mel_filters,
    n_frames,
    normalize_level,
    trim_quiet_edges,
)

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


@pytest.mark.skipif(not CLIP.is_file(), reason=f"corpus clip {CLIP} not available")
def test_trimming_cuts_the_quiet_edges_of_real_speech_and_nothing_inside() -> None:
    audio, _ = sf.read(CLIP, dtype="float32")
    audio = audio[: len(audio) // 320 * 320]
    trimmed = trim_quiet_edges(audio, 40.0)
    assert len(trimmed) % 320 == 0 and len(trimmed) < len(audio) - 16_000  # RAVDESS: ~1 s of silence each side
    start = int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(audio, len(trimmed))[:: 320]
                                      == trimmed, axis=1))[0]) * 320
    frames = audio.reshape(-1, 320).astype(np.float64)
    level = 10 * np.log10(np.maximum((frames**2).sum(axis=1), 1e-20))
    kept = slice(start // 320, (start + len(trimmed)) // 320)
    assert level[kept][[0, -1]].min() >= level.max() - 40.0  # the edges kept are loud enough
    outside = np.r_[level[: kept.start], level[kept.stop :]]
    assert outside.max() < level.max() - 40.0  # everything cut was quiet
    assert level[kept].min() < level.max() - 40.0  # pauses inside the utterance stay
    np.testing.assert_array_equal(log_mel(audio, FeatureParams(trim_db=40.0)), log_mel(trimmed))


def test_trimming_keeps_silence_and_a_lone_click_usable() -> None:
    silence = np.zeros(16_000, np.float32)
    assert trim_quiet_edges(silence, 40.0) is silence
    click = silence.copy()
    click[8_000] = 1.0
    assert len(trim_quiet_edges(click, 40.0)) == 640
    assert log_mel(click, FeatureParams(trim_db=40.0)).shape == (80, 4)
    with pytest.raises(ValueError, match="trim_db"):
        FeatureParams(trim_db=0.0)
    assert "trim_db" not in FeatureParams().to_dict()  # older checkpoints and cache keys are unchanged


@pytest.mark.skipif(not CLIP.is_file(), reason=f"corpus clip {CLIP} not available")
def test_level_normalisation_makes_real_speech_gain_invariant() -> None:
    audio, _ = sf.read(CLIP, dtype="float32")
    level = loud_level_db(audio)
    assert level is not None and -60.0 < level < -10.0  # RAVDESS keeps its takes' recorded levels
    params = FeatureParams(level_db=-18.0)
    assert loud_level_db(normalize_level(audio, -18.0)) == pytest.approx(-18.0, abs=1e-9)
    quiet, loud = (audio * np.float32(10 ** (gain / 20)) for gain in (-20.0, 12.0))
    assert np.median(log_mel(loud) - log_mel(quiet)) == pytest.approx(32.0 / 40.0, abs=0.01)  # 32 dB apart without it
    reference = log_mel(audio, params)
    np.testing.assert_allclose(log_mel(quiet, params), reference, atol=2e-3)
    np.testing.assert_allclose(log_mel(loud, params), reference, atol=2e-3)
    # the shift is one gain per input: the spectrogram's shape over time and frequency is untouched
    np.testing.assert_allclose(reference - log_mel(audio), (-18.0 - level) / 40.0, atol=2e-3)
    both = FeatureParams(trim_db=40.0, level_db=-18.0)
    np.testing.assert_allclose(log_mel(audio, both), log_mel(normalize_level(trim_quiet_edges(audio, 40.0), -18.0)),
                               atol=1e-6)


def test_level_normalisation_leaves_silence_alone_and_checks_its_target() -> None:
    silence = np.zeros(16_000, np.float32)
    assert loud_level_db(silence) is None and normalize_level(silence, -18.0) is silence
    assert log_mel(silence, FeatureParams(level_db=-18.0)).shape == (80, 100)
    short = np.full(200, 0.1, np.float32)  # under one 20 ms frame: its mean square is the level
    assert loud_level_db(short) == pytest.approx(-20.0)
    for bad in (0.0, -61.0, 6.0):
        with pytest.raises(ValueError, match=r"level_db must be between -60\.0 and -3\.0 dBFS"):
            FeatureParams(level_db=bad)
    assert "level_db" not in FeatureParams().to_dict()  # older checkpoints and cache keys are unchanged
    assert FeatureParams(level_db=-18.0).to_dict()["level_db"] == -18.0
