"""Soft labels: a source label becomes a distribution over the model's output classes (paper 1).

A ``LabelMap`` (read from YAML, see ``configs/labels.yaml``) maps each harmonized ``emotion`` and, per corpus,
optionally each ``emotion_original`` to a distribution over the classes; neutral smoothing then keeps a fixed
share of every target on ``neutral``. Hard-label mode (the ablation) turns each distribution into the one-hot
of its largest entry, without smoothing. Labels with no entry are an error listing every one of them, unless
the map has a ``default`` distribution.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_ser.types import EMOTIONS

Distribution = dict[str, float]


class LabelError(ValueError):
    """The label map is malformed, or the data carries labels the map cannot place."""


class LabelMapConfig(BaseModel):
    """The YAML form of a soft-label map."""

    model_config = ConfigDict(extra="forbid")
    classes: list[str] = Field(default_factory=lambda: list(EMOTIONS),
                               description="Output classes, in the model's output order.")
    neutral_smoothing: float = Field(0.1, ge=0.0, lt=1.0,
                                     description="Share of every target moved onto 'neutral'.")
    default: Distribution | None = Field(None, description="Distribution for labels with no entry; "
                                         "null makes unmapped labels an error.")
    emotion: dict[str, Distribution] = Field(default_factory=dict,
                                             description="Harmonized label -> distribution over classes.")
    original: dict[str, dict[str, Distribution]] = Field(
        default_factory=dict, description="corpus -> emotion_original -> distribution (overrides 'emotion').")

    @model_validator(mode="after")
    def _check(self) -> LabelMapConfig:
        if "neutral" not in self.classes and self.neutral_smoothing > 0:
            raise ValueError("neutral_smoothing > 0 needs a 'neutral' class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {self.classes}")
        problems: list[str] = []
        entries: list[tuple[str, Distribution]] = [(f"emotion.{k}", v) for k, v in self.emotion.items()]
        entries += [(f"original.{c}.{k}", v) for c, m in self.original.items() for k, v in m.items()]
        if self.default is not None:
            entries.append(("default", self.default))
        for where, dist in entries:
            unknown = sorted(set(dist) - set(self.classes))
            if unknown:
                problems.append(f"{where}: unknown classes {unknown} (expected some of {self.classes})")
            if any(v < 0 for v in dist.values()):
                problems.append(f"{where}: negative weight in {dist}")
            total = sum(dist.values())
            if abs(total - 1.0) > 1e-6:
                problems.append(f"{where}: weights sum to {total:.6g}, expected 1")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class LabelMap:
    """Turns (corpus, emotion, emotion_original) into a target distribution over ``classes``."""

    def __init__(self, config: LabelMapConfig, neutral_smoothing: float | None = None, hard: bool = False) -> None:
        self.config = config
        self.classes: tuple[str, ...] = tuple(config.classes)
        self.smoothing = config.neutral_smoothing if neutral_smoothing is None else neutral_smoothing
        if not 0.0 <= self.smoothing < 1.0:
            raise LabelError(f"neutral_smoothing must be in [0, 1), got {self.smoothing}")
        self.hard = hard

    @classmethod
    def from_yaml(cls, path: str | Path, neutral_smoothing: float | None = None, hard: bool = False) -> LabelMap:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise LabelError(f"{path}: cannot read the label map ({exc})") from exc
        try:
            config = LabelMapConfig.model_validate(raw or {})
        except ValidationError as exc:
            raise LabelError(f"{path}: invalid label map: {exc}") from exc
        return cls(config, neutral_smoothing=neutral_smoothing, hard=hard)

    def distribution(self, emotion: str, corpus: str = "", original: str = "") -> Distribution | None:
        """The map's raw distribution for a clip (before smoothing), or None when nothing maps it."""
        per_corpus = self.config.original.get(corpus, {})
        if original and original in per_corpus:
            return per_corpus[original]
        if emotion in self.config.emotion:
            return self.config.emotion[emotion]
        return self.config.default

    def target(self, emotion: str, corpus: str = "", original: str = "") -> np.ndarray:
        """The training target (float32, sums to 1) for one clip."""
        dist = self.distribution(emotion, corpus, original)
        if dist is None:
            raise LabelError(f"label {emotion!r} (corpus {corpus!r}, original {original!r}) is not in the label "
                             "map and the map has no default")
        vector = np.zeros(len(self.classes), dtype=np.float64)
        for name, weight in dist.items():
            vector[self.classes.index(name)] = weight
        if self.hard:
            onehot = np.zeros_like(vector)
            onehot[int(np.argmax(vector))] = 1.0
            return onehot.astype(np.float32)
        if self.smoothing > 0:
            vector = (1.0 - self.smoothing) * vector
            vector[self.classes.index("neutral")] += self.smoothing
        return (vector / vector.sum()).astype(np.float32)

    def unmapped(self, labels: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """The distinct (corpus, emotion, emotion_original) triples that have no distribution."""
        missing = {t for t in labels if self.distribution(t[1], t[0], t[2]) is None}
        return sorted(missing)

    def targets(self, labels: list[tuple[str, str, str]]) -> np.ndarray:
        """Targets (N, n_classes) for (corpus, emotion, emotion_original) triples; raises listing unmapped ones."""
        missing = self.unmapped(labels)
        if missing:
            listed = ", ".join(f"{e!r} (corpus {c!r}, original {o!r})" for c, e, o in missing)
            raise LabelError(f"{len(missing)} labels are not in the label map and it has no default: {listed}")
        return np.stack([self.target(e, c, o) for c, e, o in labels]) if labels else np.zeros(
            (0, len(self.classes)), dtype=np.float32)


def uniform_smoothing(targets: np.ndarray, amount: float) -> np.ndarray:
    """Label smoothing: each target row moves ``amount`` of its mass to the uniform distribution over the
    classes (``(1 - amount) * t + amount / C``); rows still sum to 1 and keep their top class."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {amount}")
    if amount == 0:
        return targets
    return ((1.0 - amount) * targets + amount / targets.shape[1]).astype(targets.dtype)
