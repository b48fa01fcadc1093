"""Stream adaptation: centre each stream's encoder features on the mean of what it has said so far.

What most separates one speaker or recording setup from another in the encoder features is a constant
offset, and that offset is what the emotion head confuses with emotion on corpora it never saw. A stream
that carries one speaker (a microphone in a room, one call) can learn it without labels: the running mean
of its speech features. The head then reads ``features - gamma * w * (m - reference)``, with ``m`` the
stream's mean of LayerNorm-standardised frames (before the final LayerNorm's affine ``gamma``, ``beta``),
``reference`` the same mean over the model's training data (``ModelMeta.speaker_norm``), and
``w = n / (n + prior)`` the shrinkage toward no change while the stream has said little (``n`` frames heard).

Windows are centred on what the stream said *before* them (causal): its first window is scored as the
model would score it without adaptation. Each window adds the frames it brings that the previous window of
its segment did not (overlapping windows do not count audio twice). A silence longer than ``reset_after_s``
starts over (a new caller on the line). Measured on LOCO's held-out corpora (docs/ablations.md, "Stream
adaptation"), replaying each speaker's clips in order: this is the figure that applies to a stream that
carries one speaker; a stream whose speakers alternate quickly gets less from it.

Pure and synchronous (``offset`` / ``push`` / ``reset``), numpy only; the pipeline keeps one per stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

FRAMES_PER_S = 50.0  # encoder frames (20 ms)
LAYER_NORM_EPS = 1e-5


class CentringConfig(BaseModel):
    """Stream adaptation settings (the ``centring`` section of the agent config)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Centre each stream's features on its own running mean (needs a "
                          "model with a speaker_norm reference; a model without one is scored as is, with a "
                          "warning). false: every window is scored on its own, as in the zero-shot benchmark.")
    prior_s: float = Field(30.0, ge=0, le=3600, description="Seconds of speech the running mean is shrunk "
                           "toward no change with: after prior_s seconds of speech the stream's own mean has "
                           "half the say (30: the most robust of 0/10/30/60 s when a speaker keeps one emotion "
                           "for long, docs/ablations.md).")
    reset_after_s: float | None = Field(300.0, gt=0, description="A silence (no scored window) longer than this "
                                        "many seconds starts the stream's mean over. null: never.")


def meta_reference(speaker_norm: dict[str, Any] | None) -> np.ndarray | None:
    """A model's stream adaptation reference (``ModelMeta.speaker_norm``) as float32, or None."""
    return None if speaker_norm is None else np.asarray(speaker_norm["reference"], dtype=np.float32)


def standardised_mean(features: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                      block: int | None = None) -> np.ndarray:
    """Mean over frames of each frame standardised over its channels (LayerNorm without its affine).

    ``features`` (frames, D) are raw encoder states; with ``gamma`` and ``beta`` they are the final
    LayerNorm's output instead, whose affine is undone first (a channel whose ``gamma`` is ~0 reads 0: the
    head never sees it, and its offset is scaled by that ``gamma`` too). A head that reads k blocks side by
    side has (frames, k x D) features, each block normalised on its own: raw states are standardised per
    ``block`` channels (default: all of them), and a (D,) ``gamma`` / ``beta`` applies to every block."""
    x = np.asarray(features, dtype=np.float32)
    if gamma is not None and beta is not None:
        reps, rest = divmod(x.shape[1], len(gamma))
        if rest or not reps:
            raise ValueError(f"features have {x.shape[1]} channels, not a multiple of the norm's {len(gamma)}")
        gamma, beta = np.tile(gamma, reps), np.tile(beta, reps)
        dead = np.abs(gamma) < 1e-6
        return np.where(dead, 0.0, (x - beta) / np.where(dead, 1.0, gamma)).mean(axis=0).astype(np.float32)
    return standardise(x, block).mean(axis=0)


def standardise(states: np.ndarray, block: int | None = None) -> np.ndarray:
    """Each frame of raw encoder ``states`` (frames, k x block) standardised over each ``block`` channels
    (default: all of them): a LayerNorm without its affine, block by block, as float32."""
    x = np.asarray(states, dtype=np.float32)
    block = block or x.shape[1]
    if x.shape[1] % block:
        raise ValueError(f"states have {x.shape[1]} channels, not a multiple of the block width {block}")
    x = x.reshape(len(x), -1, block)
    x = x - x.mean(axis=2, keepdims=True)
    x = x / np.sqrt((x * x).mean(axis=2, keepdims=True) + LAYER_NORM_EPS)
    return x.reshape(len(x), -1)


class StreamCentring:
    """One stream's running mean of standardised features, and the offset each new window is centred by."""

    def __init__(self, config: CentringConfig, reference: np.ndarray) -> None:
        self.config = config
        self.reference = np.asarray(reference, dtype=np.float64)
        self._prior = config.prior_s * FRAMES_PER_S
        self.reset()

    def reset(self) -> None:
        self._total = np.zeros_like(self.reference)
        self._frames = 0.0
        self._last_t: float | None = None
        self._until: tuple[int, float] = (-1, 0.0)  # (segment, end) of the audio already in the mean

    @property
    def heard_s(self) -> float:
        """Seconds of speech the running mean holds."""
        return self._frames / FRAMES_PER_S

    def offset(self, t0: float) -> np.ndarray | None:
        """The offset (D,) for a window starting at ``t0`` (stream seconds); None before any speech."""
        limit = self.config.reset_after_s
        if self._last_t is not None and limit is not None and t0 - self._last_t > limit:
            self.reset()
        if self._frames == 0:
            return None
        mean = self._total / self._frames
        return (self._frames / (self._frames + self._prior) * (mean - self.reference)).astype(np.float32)

    def push(self, feature_mean: np.ndarray, segment_id: int, t0: float, t1: float) -> None:
        """Add a scored window's ``feature_mean``, weighted by the seconds of ``t0..t1`` that the windows of its
        segment already in the mean did not cover (windows overlap; each second of speech counts once)."""
        if feature_mean.shape != self.reference.shape:
            raise ValueError(f"feature mean has shape {feature_mean.shape}; the reference {self.reference.shape}")
        segment, end = self._until
        same = segment == segment_id
        frames = (t1 - (max(t0, end) if same else t0)) * FRAMES_PER_S
        if frames > 0 and np.all(np.isfinite(feature_mean)):
            self._total += frames * feature_mean
            self._frames += frames
        self._until = (segment_id, max(t1, end) if same else t1)
        self._last_t = t1 if self._last_t is None else max(self._last_t, t1)
