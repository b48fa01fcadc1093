"""Decoding real clips in every supported container and refusing broken files with a clear AudioError."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from edge_ser.audio import AudioError, iter_audio_blocks, load_audio, to_mono_16k

DATA = Path("/work/shared/data")
CLIP = DATA / "tess/OAF_angry/OAF_dead_angry.opus"  # 1.48 s, 16 kHz mono Ogg/Opus
CLIP_2 = DATA / "emodb/wav/03a01Fa.opus"  # 2.0 s


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    if not CLIP.exists():
        pytest.skip(f"real audio not available: {CLIP} is missing")
    return load_audio(CLIP)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_opus_decodes_to_16k_mono_float32(ref: np.ndarray) -> None:
    assert ref.dtype == np.float32 and ref.ndim == 1
    assert abs(ref.size / 16000 - 1.483) < 0.01  # manifest duration_s
    assert np.isfinite(ref).all() and np.abs(ref).max() <= 1.0
    assert _rms(ref) > 0.01  # real speech, not silence


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "FLOAT"), ("WAV", "PCM_16"), ("FLAC", "PCM_16")])
def test_wav_and_flac_copies_decode_to_the_same_signal(ref: np.ndarray, tmp_path: Path, fmt: str,
                                                       subtype: str) -> None:
    path = tmp_path / f"copy.{fmt.lower()}"
    sf.write(path, ref, 16000, format=fmt, subtype=subtype)
    got = load_audio(path)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1 / 32768 + 1e-6)


def test_44k1_stereo_int16_copy_gives_the_same_16k_signal(ref: np.ndarray, tmp_path: Path) -> None:
    up = soxr.resample(ref, 16000, 44100)
    stereo = np.stack([up, 0.5 * up], axis=1)  # different channels: the mean is 0.75 * up
    path = tmp_path / "stereo44k.wav"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    got = load_audio(path)
    assert abs(got.size - ref.size) <= 2
    n = min(got.size, ref.size)
    err = got[200:n - 200] - 0.75 * ref[200:n - 200]
    assert _rms(err) < 0.01 * _rms(ref)


def test_to_mono_16k_accepts_int16_int32_and_float(ref: np.ndarray) -> None:
    as_int16 = np.round(ref * 32767).astype(np.int16)
    as_int32 = as_int16.astype(np.int32) << 16
    np.testing.assert_allclose(to_mono_16k(as_int16, 16000), ref, atol=1e-4)
    np.testing.assert_allclose(to_mono_16k(as_int32, 16000), ref, atol=1e-4)
    np.testing.assert_allclose(to_mono_16k(ref.astype(np.float64), 16000), ref, atol=1e-7)
    stereo = np.stack([as_int16, np.zeros_like(as_int16)], axis=1)
    np.testing.assert_allclose(to_mono_16k(stereo, 16000), ref / 2, atol=1e-4)
    down = to_mono_16k(soxr.resample(ref, 16000, 48000), 48000)
    assert abs(down.size - ref.size) <= 2


def test_to_mono_16k_refuses_absurd_rates_and_shapes(ref: np.ndarray) -> None:
    with pytest.raises(AudioError, match="sample rate 0 Hz"):
        to_mono_16k(ref, 0)
    with pytest.raises(AudioError, match="sample rate 10000000 Hz"):
        to_mono_16k(ref, 10_000_000)
    with pytest.raises(AudioError, match="shape"):
        to_mono_16k(ref.reshape(1, 1, -1), 16000)


def test_missing_empty_corrupt_and_truncated_files_name_the_file(ref: np.ndarray, tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match=r"missing\.wav: file not found"):
        load_audio(missing)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: file is empty"):
        load_audio(empty)
    corrupt = tmp_path / "corrupt.ogg"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match=r"corrupt\.ogg: cannot decode"):
        load_audio(corrupt)
    whole = tmp_path / "whole.wav"
    sf.write(whole, ref, 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(whole.read_bytes()[:30])
    with pytest.raises(AudioError, match=r"truncated\.wav"):
        load_audio(truncated)


def test_header_without_samples_is_empty_audio(tmp_path: Path) -> None:
    path = tmp_path / "nothing.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"nothing\.wav: contains no audio samples"):
        load_audio(path)
    with pytest.raises(AudioError, match="no audio samples"):
        list(iter_audio_blocks(path))


def test_nan_and_inf_samples_are_counted(ref: np.ndarray, tmp_path: Path) -> None:
    bad = ref.copy()
    bad[[10, 20, 30]] = np.nan
    bad[40] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: 3 NaN and 1 infinite sample"):
        load_audio(path)
    with pytest.raises(AudioError, match="3 NaN"):
        list(iter_audio_blocks(path))


def test_absurd_header_rate_is_refused(ref: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "slow.wav"
    sf.write(path, ref[:2000], 1000)
    with pytest.raises(AudioError, match=r"slow\.wav: sample rate 1000 Hz is not plausible"):
        load_audio(path)


def test_max_seconds_guard(ref: np.ndarray) -> None:
    with pytest.raises(AudioError, match=r"at most 1\.0 s"):
        load_audio(CLIP, max_seconds=1.0)
    assert load_audio(CLIP, max_seconds=None).size == ref.size


def test_clipping_is_a_warning_with_the_fraction(ref: np.ndarray, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    loud = np.clip(ref * 20, -1, 1)
    fraction = np.mean(np.abs(loud) >= 0.999)
    path = tmp_path / "loud.wav"
    sf.write(path, loud, 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="edge_ser.audio"):
        got = load_audio(path)
    assert got.size == ref.size
    assert f"{100 * fraction:.2f}% of the samples are clipped" in caplog.text
    assert "loud.wav" in caplog.text


def test_iter_audio_blocks_streams_the_same_signal(ref: np.ndarray) -> None:
    blocks = list(iter_audio_blocks(CLIP, 0.1))
    assert all(b.size == 1600 for b in blocks[:-1]) and 0 < blocks[-1].size <= 1600
    np.testing.assert_allclose(np.concatenate(blocks), ref, atol=1e-6)


def test_iter_audio_blocks_resamples_incrementally(tmp_path: Path) -> None:
    if not CLIP_2.exists():
        pytest.skip(f"real audio not available: {CLIP_2} is missing")
    ref = load_audio(CLIP_2)
    path = tmp_path / "stereo48k.flac"
    up = soxr.resample(ref, 16000, 48000)
    sf.write(path, np.stack([up, up], axis=1), 48000, subtype="PCM_24")
    whole = load_audio(path)
    streamed = np.concatenate(list(iter_audio_blocks(path, 0.25)))
    assert abs(streamed.size - whole.size) <= 2
    n = min(streamed.size, whole.size)
    assert _rms(streamed[:n] - whole[:n]) < 0.01 * _rms(whole)
