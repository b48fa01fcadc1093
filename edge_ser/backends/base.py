"""The one ``Engine`` interface every inference backend implements, and the pooling done outside it.

An engine takes a batch of log-mel windows of any (even) length and returns, per window, the per-frame
class logits (20 ms frames) and the per-frame pooling weights; turning them into clip probabilities or
per-second scores happens here, outside the engine, identically for every backend. A model with a prosody
classifier (``edge_ser.prosody``) reads the window's samples, which the engine never sees: the caller adds
its term (``Engine.prosody.apply``) to the scores. A model's window-statistics classifier
(``edge_ser.window_stats``) reads the features, so the engine adds its term itself, when built to. For a
model with a ``speaker_norm`` reference it also takes each window's stream offset and returns each window's mean of
standardised features (``edge_ser.centring``: stream adaptation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_ser.centring import meta_reference
from edge_ser.checkpoint import ModelMeta
from edge_ser.prosody import ProsodyScorer

FRAMES_PER_SECOND = 50


@dataclass(frozen=True, slots=True)
class FrameScores:
    """One window's engine output: logits (frames, classes) and pooling weights (frames,) summing to 1."""

    logits: np.ndarray
    weights: np.ndarray
    feature_mean: np.ndarray | None = None  # (D,) edge_ser.centring.standardised_mean, before any offset
    bias: np.ndarray | None = None  # (classes,) the window's prosody term (edge_ser.prosody), added to every score

    def clip_logits(self) -> np.ndarray:
        logits = self.weights @ self.logits
        return logits if self.bias is None else logits + self.bias

    def clip_probs(self) -> np.ndarray:
        return softmax(self.clip_logits())

    def per_second_logits(self) -> np.ndarray:
        """Mean logits over each full or partial second (50 frames), shape (seconds, classes)."""
        count = -(-len(self.logits) // FRAMES_PER_SECOND)
        seconds = np.stack(
            [self.logits[i * FRAMES_PER_SECOND : (i + 1) * FRAMES_PER_SECOND].mean(axis=0) for i in range(count)]
        )
        return seconds if self.bias is None else seconds + self.bias


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=axis, keepdims=True)).astype(np.float32)


class Engine(ABC):
    """An emotion model ready to score log-mel windows.

    ``concurrency`` is how many ``infer`` calls may run at once from different threads (1: one caller at a
    time); the batcher keeps that many batches in flight.
    """

    meta: ModelMeta
    labels: tuple[str, ...]
    model_id: str
    concurrency: int = 1
    supports_offsets: bool = True  # takes stream offsets (stream adaptation, edge_ser.centring)
    prosody: ProsodyScorer | None = None  # the model's prosody term, added by the caller that has the samples

    @abstractmethod
    def infer(self, mels: Sequence[np.ndarray], offsets: Sequence[np.ndarray | None] | None = None
              ) -> list[FrameScores]:
        """Score a batch of log-mel windows, each (n_mels, frames) with an even frame count <= 3000;
        ``offsets``: per window, None or the (D,) stream offset its features are centred by."""

    @property
    def centring_reference(self) -> np.ndarray | None:
        """The model's training mean of standardised features (stream adaptation), or None."""
        return meta_reference(self.meta.speaker_norm)

    def warmup(self, seconds: Sequence[float] = (2.0, 1.0)) -> None:
        """Run the engine once per window length so the first real window is not slow."""
        rng = np.random.default_rng(0)
        self.infer([rng.standard_normal((80, int(s * 100) // 2 * 2)).astype(np.float32) for s in seconds])


def group_by_length(mels: Sequence[np.ndarray]) -> dict[int, list[int]]:
    """Indices of the windows grouped by frame count: Whisper's encoder has no padding mask, so only
    windows of the same length can share a batch without changing each other's result."""
    groups: dict[int, list[int]] = {}
    for index, mel in enumerate(mels):
        if mel.ndim != 2 or mel.shape[1] % 2 or not 2 <= mel.shape[1] <= 3000:
            raise ValueError(f"window {index}: expected (n_mels, even frames <= 3000), got shape {mel.shape}")
        groups.setdefault(mel.shape[1], []).append(index)
    return groups


def check_offsets(offsets: Sequence[np.ndarray | None] | None, count: int, width: int) -> list[np.ndarray | None]:
    """``offsets`` as a list of ``count`` entries, each None or a finite (width,) float32 array."""
    if offsets is None:
        return [None] * count
    if len(offsets) != count:
        raise ValueError(f"{len(offsets)} offsets for {count} windows")
    out: list[np.ndarray | None] = []
    for index, offset in enumerate(offsets):
        if offset is not None:
            offset = np.asarray(offset, dtype=np.float32)
            if offset.shape != (width,) or not np.all(np.isfinite(offset)):
                raise ValueError(f"window {index}: offset must be finite with shape ({width},), got {offset.shape}")
        out.append(offset)
    return out
