"""Window statistics: the mean and spread of the encoder features over a window, scored by a linear
classifier fused with the frame head.

The frame head scores each 20 ms frame on its own and averages the frames' logits, so a clip's score is a
function of the frames' mean alone; how much the features move within the window (its standard deviation)
never reaches it. A model may carry a ``StatsHead``: logistic regression on the window's per-feature mean and
standard deviation of the head's input, taken in the final LayerNorm's unscaled space (each frame standardised
over its features, before the LayerNorm's affine), so one classifier serves members whose LayerNorm affines
differ (a merged model folds them into its head). Its class log-probabilities, times the fusion weight, are
added to every frame logit of the window, hence to its clip logits and to each of its per-second logits. It
costs one pass over the features the head already reads.

Tensors in ``model.safetensors`` (K members, C classes, F = 2 x the head's input width): ``stats.mean``,
``stats.scale``, ``stats.weight``, ``stats.bias`` (``edge_ser.linear_probe``); ``model.json`` ``stats`` =
``{"weight": w}``, and optionally ``"fit": {"c": C}``, how it was fitted (trainer/window_stats.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from edge_ser.linear_probe import LinearProbe, tensors_problem, weight_problem


class StatsHead(LinearProbe):
    """K classifiers on the window's [mean, standard deviation] of standardised features; ``fit``: ``{"c": C}``."""

    prefix: ClassVar[str] = "stats"

    def in_feature_space(self, gamma: np.ndarray, beta: np.ndarray) -> StatsHead:
        """The same classifier reading the statistics of features after a LayerNorm affine ``gamma``, ``beta``
        (width,): a feature ``f = gamma * n + beta`` has mean ``gamma * mean(n) + beta`` and standard deviation
        ``|gamma| * std(n)``, so the standardisation moves into that space (its scale may turn negative)."""
        width = len(gamma)
        g, b = gamma.astype(np.float64), beta.astype(np.float64)
        mean, scale = self.mean.astype(np.float64), self.scale.astype(np.float64)
        shift = np.concatenate([g * mean[:, :width] + b, np.abs(g) * mean[:, width:]], axis=1)
        stretch = np.concatenate([g * scale[:, :width], np.abs(g) * scale[:, width:]], axis=1)
        return replace(self, mean=shift.astype(np.float32), scale=stretch.astype(np.float32))


def window_statistics(features: np.ndarray) -> np.ndarray:
    """(2 * width,) float32: the per-feature mean and standard deviation over the frames of (frames, width)."""
    features = np.asarray(features, dtype=np.float32)
    return np.concatenate([features.mean(axis=0), features.std(axis=0)]).astype(np.float32)


def stats_problem(meta: Any, tensors: dict[str, np.ndarray], n_classes: int, width: int) -> str | None:
    """Why ``model.json``'s ``stats`` entry and the ``stats.*`` tensors cannot be used for a head reading
    ``width`` features (None when they can)."""
    if not (isinstance(meta, dict) and set(meta) - {"fit"} == {"weight"}):
        return f"'stats' must be null or an object with 'weight' (and 'fit'), got {meta!r:.80}"
    fit = meta.get("fit")
    if fit is not None and not (isinstance(fit, dict) and set(fit) == {"c"} and not isinstance(fit["c"], bool)
                                and isinstance(fit["c"], int | float) and fit["c"] > 0):
        return f"stats.fit must be an object with a positive number 'c', got {fit!r:.80}"
    return weight_problem("stats", meta["weight"]) or tensors_problem(StatsHead, tensors, n_classes, 2 * width,
                                                                       "window statistics (2 x the head's input)")
