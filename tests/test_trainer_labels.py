"""Soft-label map: YAML parsing, targets, neutral smoothing, hard mode, unmapped labels, uniform smoothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ser.types import EMOTIONS
from trainer.labels import LabelError, LabelMap, uniform_smoothing

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.yaml"
    path.write_text(text)
    return path


def test_shipped_map_places_every_harmonized_label() -> None:
    labels = LabelMap.from_yaml(ROOT / "configs" / "labels.yaml")
    assert labels.classes == EMOTIONS
    for emotion in ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "other"):
        target = labels.target(emotion)
        assert target.shape == (8,)
        assert target.sum() == pytest.approx(1.0, abs=1e-6)
        assert (target >= 0).all()


def test_neutral_smoothing_moves_mass_to_neutral() -> None:
    labels = LabelMap.from_yaml(ROOT / "configs" / "labels.yaml", neutral_smoothing=0.1)
    angry = labels.target("angry")
    assert angry[EMOTIONS.index("angry")] == pytest.approx(0.9)
    assert angry[EMOTIONS.index("neutral")] == pytest.approx(0.1)
    assert labels.target("neutral")[EMOTIONS.index("neutral")] == pytest.approx(1.0)
    calm = labels.target("calm")  # {neutral: 0.7, other: 0.3} smoothed
    assert calm[EMOTIONS.index("neutral")] == pytest.approx(0.9 * 0.7 + 0.1)
    assert calm[EMOTIONS.index("other")] == pytest.approx(0.9 * 0.3)


def test_per_corpus_original_label_overrides_the_harmonized_one() -> None:
    labels = LabelMap.from_yaml(ROOT / "configs" / "labels.yaml", neutral_smoothing=0.0)
    boredom = labels.target("other", corpus="emodb", original="Langeweile (boredom)")
    assert boredom[EMOTIONS.index("other")] == pytest.approx(0.6)
    assert boredom[EMOTIONS.index("sad")] == pytest.approx(0.2)
    assert labels.target("other", corpus="ravdess", original="Langeweile (boredom)")[EMOTIONS.index("other")] == 1.0


def test_hard_mode_is_one_hot_of_the_top_class_without_smoothing() -> None:
    labels = LabelMap.from_yaml(ROOT / "configs" / "labels.yaml", hard=True)
    calm = labels.target("calm")
    assert calm.tolist() == np.eye(8, dtype=np.float32)[EMOTIONS.index("neutral")].tolist()
    assert labels.target("angry")[EMOTIONS.index("angry")] == 1.0


def test_unmapped_labels_are_listed_unless_a_default_exists(tmp_path: Path) -> None:
    strict = LabelMap.from_yaml(write(tmp_path, "emotion:\n  angry: {angry: 1.0}\n"))
    with pytest.raises(LabelError) as info:
        strict.targets([("c1", "angry", ""), ("c1", "joy", "J"), ("c2", "rage", "")])
    assert "'joy'" in str(info.value) and "'rage'" in str(info.value) and "2 labels" in str(info.value)
    lenient = LabelMap.from_yaml(write(tmp_path, "default: {other: 1.0}\nneutral_smoothing: 0.2\n"))
    target = lenient.target("joy")
    assert target[EMOTIONS.index("other")] == pytest.approx(0.8)
    assert target[EMOTIONS.index("neutral")] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("emotion:\n  calm: {neutral: 0.5, other: 0.4}\n", "sum to 0.9"),
        ("emotion:\n  calm: {relaxed: 1.0}\n", "unknown classes ['relaxed']"),
        ("emotion:\n  calm: {neutral: 1.5, other: -0.5}\n", "negative weight"),
        ("neutral_smoothing: 1.5\n", "neutral_smoothing"),
        ("colours: [red]\n", "colours"),
    ],
)
def test_malformed_maps_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LabelError) as info:
        LabelMap.from_yaml(write(tmp_path, text))
    assert message in str(info.value)


def test_uniform_smoothing_spreads_a_share_evenly_and_keeps_the_top_class() -> None:
    targets = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    assert uniform_smoothing(targets, 0.0) is targets
    smoothed = uniform_smoothing(targets, 0.2)
    assert smoothed.dtype == np.float32
    np.testing.assert_allclose(smoothed[0], [0.85, 0.05, 0.05, 0.05], rtol=1e-6)
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0, rtol=1e-6)
    assert (smoothed.argmax(axis=1) == np.array([0, 1, 3])).all()
    with pytest.raises(ValueError, match="label smoothing must be in"):
        uniform_smoothing(targets, 1.0)
