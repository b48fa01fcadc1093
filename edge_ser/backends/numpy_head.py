"""The emotion head (per-frame MLP + pooling weights) in numpy, for engines that run only the encoder
(CTranslate2 returns the final LayerNorm's output). Mirrors ``edge_ser.model.EmotionHead``; also applies a
stream's offset, adds a model's window-statistics term (``edge_ser.window_stats``) and measures the window's
mean of standardised features (``edge_ser.centring``)."""

from __future__ import annotations

import numpy as np

from edge_ser.backends.base import FrameScores
from edge_ser.centring import standardised_mean
from edge_ser.checkpoint import ModelMeta
from edge_ser.window_stats import StatsHead, window_statistics

_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))  # a Python float: keeps float32 arrays in float32 (NEP 50)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form, in the input's dtype (``x**3`` and numpy float64 scalars would cost 10x here)."""
    inner = x * x
    inner *= 0.044715 * x
    inner += x
    inner *= _SQRT_2_OVER_PI
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= 0.5 * x
    return inner


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class NumpyHead:
    """Applies the trained head to normalised encoder features (frames, width: d_model per block read)."""

    def __init__(self, meta: ModelMeta, tensors: dict[str, np.ndarray], window_stats: bool = True) -> None:
        """``window_stats``: add the model's window-statistics term, if it has one."""
        self.fc1_w = np.ascontiguousarray(tensors["head.fc1.weight"].T, dtype=np.float32)
        self.fc1_b = tensors["head.fc1.bias"].astype(np.float32)
        self.fc2_w = np.ascontiguousarray(tensors["head.fc2.weight"].T, dtype=np.float32)
        self.fc2_b = tensors["head.fc2.bias"].astype(np.float32)
        attention = tensors.get("head.attention.weight")
        self.att_w = None if attention is None else attention.T.astype(np.float32)
        self.att_b = tensors.get("head.attention.bias")
        prior = meta.class_log_prior
        self.log_prior = np.zeros(len(meta.labels), np.float32) if prior is None else np.asarray(prior, np.float32)
        # the final LayerNorm's affine, once per block the head reads side by side (layer_join: concat)
        blocks = self.fc1_w.shape[0] // len(tensors["norm.weight"])
        self.gamma = np.tile(tensors["norm.weight"].astype(np.float32), blocks)
        self.beta = np.tile(tensors["norm.bias"].astype(np.float32), blocks)
        self.stats = (None if meta.stats is None or not window_stats
                      else StatsHead.from_tensors(meta.stats, tensors).in_feature_space(self.gamma, self.beta))
        self.measure = meta.speaker_norm is not None  # stream adaptation: report each window's feature mean

    def __call__(self, features: np.ndarray, offset: np.ndarray | None = None) -> FrameScores:
        """Scores for one window's normalised features (frames, width), centred by ``offset`` (width,)."""
        mean = standardised_mean(features, self.gamma, self.beta) if self.measure else None
        if offset is not None:
            features = features - self.gamma * offset
        hidden = _gelu_tanh(features @ self.fc1_w + self.fc1_b)
        logits = hidden @ self.fc2_w + self.fc2_b - self.log_prior
        if self.stats is not None:  # the window-statistics term, on every frame (edge_ser.window_stats)
            logits += self.stats.logit_bias(window_statistics(features)[None])[0]
        if self.att_w is None or self.att_b is None:
            weights = np.full(len(features), 1.0 / len(features), np.float32)
        else:
            weights = _softmax((hidden @ self.att_w + self.att_b)[:, 0]).astype(np.float32)
        return FrameScores(logits=logits.astype(np.float32), weights=weights, feature_mean=mean)
