"""The emotion head (final LayerNorm + per-frame MLP + pooling weights) in numpy, for engines that run
only the encoder (CTranslate2 returns normalised encoder states). Mirrors ``edge_ser.model.EmotionHead``."""

from __future__ import annotations

import numpy as np

from edge_ser.backends.base import FrameScores
from edge_ser.checkpoint import ModelMeta


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class NumpyHead:
    """Applies the trained head to normalised encoder features (frames, d_model)."""

    def __init__(self, meta: ModelMeta, tensors: dict[str, np.ndarray]) -> None:
        self.fc1_w = tensors["head.fc1.weight"].T.astype(np.float32)
        self.fc1_b = tensors["head.fc1.bias"].astype(np.float32)
        self.fc2_w = tensors["head.fc2.weight"].T.astype(np.float32)
        self.fc2_b = tensors["head.fc2.bias"].astype(np.float32)
        attention = tensors.get("head.attention.weight")
        self.att_w = None if attention is None else attention.T.astype(np.float32)
        self.att_b = tensors.get("head.attention.bias")
        prior = meta.class_log_prior
        self.log_prior = np.zeros(len(meta.labels), np.float32) if prior is None else np.asarray(prior, np.float32)

    def __call__(self, features: np.ndarray) -> FrameScores:
        hidden = _gelu_tanh(features @ self.fc1_w + self.fc1_b)
        logits = hidden @ self.fc2_w + self.fc2_b - self.log_prior
        if self.att_w is None or self.att_b is None:
            weights = np.full(len(features), 1.0 / len(features), np.float32)
        else:
            weights = _softmax((hidden @ self.att_w + self.att_b)[:, 0]).astype(np.float32)
        return FrameScores(logits=logits.astype(np.float32), weights=weights)
