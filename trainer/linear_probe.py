"""Fitting a fused classifier (``edge_ser.linear_probe``) on a run's training clips, and writing it into a
model folder: the training side shared by the prosody (trainer/prosody.py) and window-statistics
(trainer/window_stats.py) classifiers."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge_ser.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edge_ser.linear_probe import LinearProbe

log = logging.getLogger(__name__)

ABSENT_MARGIN = 10.0
"""A class without training clips gets a bias this far under the lowest fitted one (about e^-10 as likely)."""

P = TypeVar("P", bound=LinearProbe)


def fit_linear_probe(probe: type[P], features: np.ndarray, targets: np.ndarray, weights: np.ndarray, c: float,
                     fusion_weight: float, fit: dict[str, Any]) -> P:
    """Standardise the (N, F) ``features`` and fit a multinomial logistic regression (inverse L2 strength
    ``c``) to each target's top class with the loss weights ``weights``; rows with NaN are left out. Classes
    without training clips get a bias ``ABSENT_MARGIN`` under the lowest fitted one. ``fit`` is recorded."""
    from sklearn.linear_model import LogisticRegression

    what = probe.prefix
    if len(features) != len(targets) or len(targets) != len(weights):
        raise ValueError(f"fit {what}: {len(features)} feature rows, {len(targets)} targets, {len(weights)} weights")
    finite = np.isfinite(features).all(axis=1)
    x, top, w = features[finite], targets[finite].argmax(axis=1), weights[finite]
    present = np.unique(top)
    if len(present) < 2:
        raise ValueError(f"fit {what}: the training clips have {len(present)} class(es); two or more are needed")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    regression = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, top, sample_weight=w)
    coef, intercept = regression.coef_, regression.intercept_
    if len(present) == 2:  # scikit-learn's binary form: one row, the second class's logit against the first's
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    n_classes = targets.shape[1]
    weight = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, intercept.min() - ABSENT_MARGIN, dtype=np.float32)
    weight[regression.classes_], bias[regression.classes_] = coef, intercept
    log.info("%s: logistic regression on %d clips, %d classes (%d rows with NaN left out)",
             what, len(x), len(present), int((~finite).sum()))
    return probe(mean[None].astype(np.float32), scale[None].astype(np.float32), weight[None], bias[None],
                 fusion_weight=fusion_weight, fit=fit)


def attach_probe(model_dir: str | Path, head: LinearProbe, classes: Sequence[str], model_id: str | None = None
                 ) -> None:
    """Write ``head``, fitted for ``classes``, into the model folder (replacing any earlier one of its kind;
    ``model.json``'s field is the head's prefix); ``model_id`` renames the model (its weights change)."""
    meta, tensors = load_checkpoint(model_dir)
    if list(meta.labels) != list(classes):
        raise CheckpointError(f"{model_dir}: the model's labels {meta.labels} are not the classes the {head.prefix} "
                              f"classifier was fitted for {list(classes)}")
    setattr(meta, head.prefix, head.meta())
    meta.model_id = model_id or meta.model_id
    save_checkpoint(model_dir, meta, {**tensors, **head.tensors()})


def attach_main(argv: list[str] | None, module: str, description: str, kind: str, method: str,
                overrides: Sequence[str] = ()) -> int:
    """The command ``python -m <module>`` that fits a ``kind`` classifier into a model folder on every clip the
    recipe trains on, with ``RunData.<method>`` (``overrides`` are applied after the user's)."""
    from trainer.config import ConfigError, load_config
    from trainer.data import ManifestError
    from trainer.labels import LabelError
    from trainer.train import prepare, training_indices

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--model", required=True, help=f"model folder to add the {kind} classifier to")
    parser.add_argument("--config", default=None, help="recipe YAML (its classifier, label, balance and cache "
                        "settings)")
    parser.add_argument("--manifest", required=True, help="manifest CSV of the clips to fit on")
    parser.add_argument("--model-id", default=None, help="a new model id for the model (default: keep its own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field (dotted path, YAML value); repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, [*args.overrides, *overrides])
        data = prepare(config, args.manifest)
        getattr(data, method)(config, Path(args.model), training_indices(config, data), args.model_id)
    except (ConfigError, LabelError, ManifestError, CheckpointError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    log.info("%s classifier written into %s", kind, args.model)
    return 0
