"""The window-statistics classifier's training side: every clip's per-feature mean and standard deviation of
its standardised frame-cache features, and the logistic regression fitted on a run's training clips. Scoring
and fusion live in ``edge_ser/window_stats.py``.

``fit`` (trainer/train.py) adds it to every model it trains when ``stats.enabled``; ``trainer.loco --rescore``
adds it to the fold models of an earlier run. For a model trained elsewhere (the shipped default):

    python -m trainer.window_stats --model models/default --config configs/train-cpu.yaml \\
        --manifest ../shared/data/manifest.csv [--model-id NEW_ID]

fits it on every clip the recipe would train on (its corpus and label filters; no dev split, since the
fusion weight is fixed by the recipe) and writes it into the model folder (a new weights sha256). The
statistics are read from the frame cache (built on first use, as training builds it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from edge_ser.centring import standardise
from edge_ser.model import D_MODEL
from edge_ser.window_stats import StatsHead, window_statistics
from trainer.cache import CachedView
from trainer.linear_probe import attach_main, fit_linear_probe

log = logging.getLogger(__name__)


def clip_statistics(view: CachedView, indices: Sequence[int], show_progress: bool = True) -> np.ndarray:
    """(N, 2 * width) float32: each clip's ``window_statistics`` of its cached states, each frame standardised
    per encoder block (the head's input before the final LayerNorm's affine)."""
    out = np.zeros((len(indices), 2 * view.width), dtype=np.float32)
    for row, i in enumerate(tqdm(indices, desc="window statistics", unit="clip", disable=not show_progress)):
        out[row] = window_statistics(standardise(np.asarray(view.get(i)), D_MODEL))
    return out


def fit_stats(statistics: np.ndarray, targets: np.ndarray, weights: np.ndarray, c: float,
              fusion_weight: float) -> StatsHead:
    """The window-statistics classifier of (N, 2 * width) clip statistics (``fit_linear_probe``)."""
    return fit_linear_probe(StatsHead, statistics, targets, weights, c, fusion_weight, {"c": c})


def main(argv: list[str] | None = None) -> int:
    return attach_main(argv, "trainer.window_stats", __doc__.split("\n\n")[0], "window-statistics", "add_stats")


if __name__ == "__main__":
    raise SystemExit(main())
