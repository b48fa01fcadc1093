"""Per-speaker centring (trainer/speaker_norm.py): the means, the offsets and the causal stream replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge_ser.centring import FRAMES_PER_S, standardised_mean
from trainer.data import Clip
from trainer.speaker_norm import clip_offsets, speaker_offsets, stream_offsets


def _clip(speaker: str, emotion: str) -> Clip:
    return Clip(line=0, path=Path("x.opus"), corpus="c", speaker=speaker, emotion=emotion)


def test_standardised_mean_is_layer_norm_without_affine_averaged_over_frames() -> None:
    states = np.random.default_rng(0).standard_normal((37, 512)).astype(np.float32) * 3 + 1
    expected = torch.nn.functional.layer_norm(torch.from_numpy(states), (512,)).mean(dim=0).numpy()
    np.testing.assert_allclose(standardised_mean(states), expected, atol=1e-5)


def test_speaker_offsets_are_each_speakers_mean_minus_the_reference() -> None:
    clips = [_clip("a", "happy"), _clip("b", "sad"), _clip("a", "sad"), _clip("b", "angry"), _clip("b", "sad")]
    means = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    reference = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    offsets = speaker_offsets(clips, [0, 1, 2, 3, 4], means, reference)
    np.testing.assert_allclose(offsets[0], means[[0, 2]].mean(axis=0) - reference)
    np.testing.assert_allclose(offsets[2], offsets[0])
    np.testing.assert_allclose(offsets[[1, 3, 4]], np.repeat([means[[1, 3, 4]].mean(axis=0) - reference], 3, axis=0))
    # only the clips asked for count: speaker b's mean over clips 1 and 3 alone
    np.testing.assert_allclose(speaker_offsets(clips, [1, 3], means[[1, 3]], reference)[0],
                               means[[1, 3]].mean(axis=0) - reference)


def _stream_case() -> tuple[list[Clip], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    emotions = ["neutral", "happy", "sad", "angry"]
    clips = [_clip(s, emotions[k % 4]) for s in ("a", "b") for k in range(12)]
    return clips, rng.standard_normal((24, 4)).astype(np.float32), rng.integers(50, 300, 24)


def test_stream_offsets_use_only_the_speakers_earlier_clips_shrunk_toward_the_reference() -> None:
    clips, means, frames = _stream_case()
    reference = np.full(4, 0.25, dtype=np.float32)
    offsets, history = stream_offsets(clips, range(24), means, frames, reference, prior_s=2.0, seed=3)
    for speaker in ("a", "b"):
        rows = sorted((r for r in range(24) if clips[r].speaker == speaker), key=lambda r: history[r])
        assert history[rows[0]] == 0 and not offsets[rows[0]].any()  # the first clip: nothing heard yet
        for k, r in enumerate(rows[1:], start=1):
            earlier = rows[:k]
            seen = frames[earlier].sum()
            assert history[r] == pytest.approx(seen / FRAMES_PER_S)
            mean = (means[earlier] * frames[earlier, None]).sum(axis=0) / seen
            np.testing.assert_allclose(offsets[r], seen / (seen + 2.0 * FRAMES_PER_S) * (mean - reference),
                                       rtol=1e-5, atol=1e-6)
    again, _ = stream_offsets(clips, range(24), means, frames, reference, prior_s=2.0, seed=3)
    np.testing.assert_array_equal(offsets, again)  # the order is seeded
    other, _ = stream_offsets(clips, range(24), means, frames, reference, prior_s=2.0, seed=4)
    assert not np.array_equal(offsets, other)


def test_grouped_streams_play_each_emotion_in_a_row() -> None:
    clips, means, frames = _stream_case()
    _, history = stream_offsets(clips, range(24), means, frames, np.zeros(4), prior_s=0.0, seed=0, order="grouped")
    for speaker in ("a", "b"):
        rows = sorted((r for r in range(24) if clips[r].speaker == speaker), key=lambda r: history[r])
        played = [clips[r].emotion for r in rows]
        runs = [e for k, e in enumerate(played) if k == 0 or played[k - 1] != e]
        assert sorted(runs) == ["angry", "happy", "neutral", "sad"]  # one run per emotion


def test_stream_offsets_refuse_bad_settings() -> None:
    clips, means, frames = _stream_case()
    with pytest.raises(ValueError, match="stream order must be one of"):
        stream_offsets(clips, range(24), means, frames, np.zeros(4), 1.0, 0, order="sorted")
    with pytest.raises(ValueError, match="prior_s must be >= 0 seconds, got -1"):
        stream_offsets(clips, range(24), means, frames, np.zeros(4), -1.0, 0)


def test_clip_offsets_centre_each_clip_on_its_own_mean_shrunk_by_its_length() -> None:
    means = np.array([[1.0, 3.0], [2.0, -2.0]], dtype=np.float32)
    reference = np.array([1.0, 1.0], dtype=np.float32)
    offsets = clip_offsets(means, np.array([50, 150]), reference, prior_s=1.0)
    np.testing.assert_allclose(offsets, [[0.0, 1.0], [0.75, -2.25]], rtol=1e-6)
    np.testing.assert_allclose(clip_offsets(means, np.array([50, 150]), reference, 0.0), means - reference)
