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

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_ser.checkpoint import CheckpointError
from edge_ser.model import D_MODEL
from edge_ser.window_stats import StatsHead, standardise, window_statistics
from trainer.cache import CachedView
from trainer.linear_probe import fit_linear_probe

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
    from trainer.config import ConfigError, load_config
    from trainer.data import ManifestError
    from trainer.labels import LabelError
    from trainer.train import prepare, training_indices

    parser = argparse.ArgumentParser(prog="python -m trainer.window_stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder to add the window-statistics classifier to")
    parser.add_argument("--config", default=None, help="recipe YAML (its stats, label, balance and cache settings)")
    parser.add_argument("--manifest", required=True, help="manifest CSV of the clips to fit on")
    parser.add_argument("--model-id", default=None, help="a new model id for the model (default: keep its own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field (dotted path, YAML value); repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        data = prepare(config, args.manifest)
        data.add_stats(config, Path(args.model), training_indices(config, data), args.model_id)
    except (ConfigError, LabelError, ManifestError, CheckpointError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    log.info("window-statistics classifier (fusion weight %.2f) written into %s", config.stats.weight, args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
