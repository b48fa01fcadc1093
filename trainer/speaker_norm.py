"""Per-speaker centring of the encoder features in the trainer: the means, the offsets, the reference.

Most of what separates the corpora is an offset per recording setup and speaker (docs/ablations.md, "Stream
adaptation": centring each held-out speaker on their own mean lifts LOCO UA from 0.667 to 0.745). The head
reads the normalised encoder features minus ``gamma * w * (m - m_ref)``: ``m`` a mean of the speaker's
clips, ``m_ref`` the mean over the training clips, ``gamma`` the final LayerNorm's scale, ``w`` a shrinkage.
Means are taken in the LayerNorm's *unscaled* space (each frame standardised over its 512 channels, before
``gamma`` and ``beta``; ``edge_ser.centring.standardised_mean``), so they do not move while the LayerNorm
trains, and the runtime, which only sees the LayerNorm's output, recovers them (``edge_ser.centring``).

* ``speaker_offsets``: each speaker's mean over all their clips (``normalize: speaker`` in training;
  ``trainer.loco --centre speaker``); ``stream_offsets``: causal, each clip on the speaker's earlier clips,
  as the agent adapts a stream; ``clip_offsets``: each clip on itself (zero-shot, measured useless).
* ``python -m trainer.speaker_norm --model DIR --config C --manifest M``: write the reference the agent needs
  into a model trained without it (``model.json`` only).

The means use audio only, never labels; a score with speaker or stream centring is a *speaker-adaptive*
figure, not the zero-shot one of the EVAL.md headline.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from edge_ser.centring import FRAMES_PER_S, standardised_mean
from edge_ser.checkpoint import (
    CheckpointError,
    ModelMeta,
    blocks_read,
    learns_layer_mix,
    load_checkpoint,
    update_meta,
)
from edge_ser.model import D_MODEL
from trainer.cache import CachedView
from trainer.config import ConfigError, TrainConfig, load_config
from trainer.data import Clip, ManifestError

if TYPE_CHECKING:
    from trainer.train import RunData

log = logging.getLogger(__name__)

STREAM_ORDERS = ("shuffled", "grouped")


def clip_means(view: CachedView, indices: Sequence[int]) -> np.ndarray:
    """(N, width) float32: every clip's ``standardised_mean`` of its cached states (rows in ``indices`` order);
    a view of blocks side by side is standardised block by block, as the model normalises them."""
    out = np.zeros((len(indices), view.width), dtype=np.float32)
    for row, i in enumerate(tqdm(indices, desc="speaker means", unit="clip", mininterval=10, leave=False)):
        out[row] = standardised_mean(view.get(int(i)), block=D_MODEL)
    return out


def speaker_table(clips: Sequence[Clip], indices: Sequence[int], means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each speaker's mean over their clips of ``indices`` (S, D), and each clip's row in that table (N,).
    ``means`` holds the clips' ``standardised_mean`` rows in ``indices`` order."""
    speakers, row_of = np.unique([clips[i].speaker for i in indices], return_inverse=True)
    table = np.stack([means[row_of == k].mean(axis=0) for k in range(len(speakers))])
    return row_of.astype(np.int64), table.astype(np.float32)


def speaker_offsets(clips: Sequence[Clip], indices: Sequence[int], means: np.ndarray,
                    reference: np.ndarray) -> np.ndarray:
    """(N, D) offsets, one per clip of ``indices``: its speaker's mean over those of ``indices`` minus
    ``reference``. ``means`` holds the clips' ``standardised_mean`` rows in ``indices`` order."""
    if len(indices) == 0:
        return np.zeros((0, means.shape[1]), dtype=np.float32)
    row_of, table = speaker_table(clips, indices, means)
    return (table[row_of] - reference).astype(np.float32)


def clip_offsets(means: np.ndarray, frames: np.ndarray, reference: np.ndarray, prior_s: float) -> np.ndarray:
    """(N, D) offsets that centre each clip on its own mean, shrunk toward the reference:
    ``n / (n + prior) * (m - reference)``, ``n`` the clip's frames. Uses nothing but the clip (zero-shot)."""
    if prior_s < 0:
        raise ValueError(f"prior_s must be >= 0 seconds, got {prior_s}")
    n = np.asarray(frames, dtype=np.float64)[:, None]
    return (n / (n + prior_s * FRAMES_PER_S) * (means - reference)).astype(np.float32)


def stream_offsets(clips: Sequence[Clip], indices: Sequence[int], means: np.ndarray, frames: np.ndarray,
                   reference: np.ndarray, prior_s: float, seed: int, order: str = "shuffled"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Causal per-speaker offsets, as an agent adapting to one speaker's stream would have them.

    Each speaker's clips are replayed in a seeded order (``shuffled``; ``grouped``: all clips of one emotion
    in a row, emotions in a seeded order: the worst case, a speaker who stays in one emotion for long).
    Clip ``j`` is centred on the frame-weighted mean ``m`` of the speaker's *earlier* clips only, shrunk
    toward the reference: offset = ``n / (n + prior) * (m - reference)``, ``n`` the earlier frames, ``prior``
    ``prior_s`` seconds of frames; the speaker's first clip is scored uncentred. Returns the offsets (N, D)
    and each clip's history in seconds (N,), both in ``indices`` order.
    """
    if order not in STREAM_ORDERS:
        raise ValueError(f"stream order must be one of {STREAM_ORDERS}, got {order!r}")
    if prior_s < 0:
        raise ValueError(f"prior_s must be >= 0 seconds, got {prior_s}")
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[int]] = {}
    for row, i in enumerate(indices):
        by_speaker.setdefault(clips[i].speaker, []).append(row)
    offsets = np.zeros((len(indices), means.shape[1]), dtype=np.float32)
    history = np.zeros(len(indices), dtype=np.float64)
    prior = prior_s * FRAMES_PER_S
    for speaker in sorted(by_speaker):
        rows = [by_speaker[speaker][k] for k in rng.permutation(len(by_speaker[speaker]))]
        if order == "grouped":
            emotions = sorted({clips[indices[r]].emotion for r in rows})
            rank = {e: k for k, e in enumerate(emotions[k] for k in rng.permutation(len(emotions)))}
            rows.sort(key=lambda r: rank[clips[indices[r]].emotion])
        total = np.zeros(means.shape[1], dtype=np.float64)
        seen = 0.0
        for r in rows:
            if seen > 0:
                offsets[r] = seen / (seen + prior) * (total / seen - reference)
            history[r] = seen / FRAMES_PER_S
            total += means[r] * float(frames[r])
            seen += float(frames[r])
    return offsets, history


def training_reference(data: RunData, corpora: Sequence[str] | None) -> tuple[np.ndarray, int]:
    """The mean of every usable clip's ``standardised_mean`` over ``corpora`` (None: every corpus), and the
    number of clips it averages."""
    rows = [i for i in data.usable if corpora is None or data.manifest.clips[i].corpus in corpora]
    if not rows:
        raise ValueError(f"no usable clip of the corpora {sorted(corpora or [])} in {data.manifest.path}")
    return data.speaker_means()[rows].mean(axis=0), len(rows)


def add_reference(model_dir: Path, config: TrainConfig, manifest: str | Path) -> ModelMeta:
    """Write ``speaker_norm = {reference, trained: false}`` into an existing model's ``model.json`` (the weights
    file is not touched), the reference taken over the manifest's clips of the corpora the model was trained
    on."""
    meta, tensors = load_checkpoint(model_dir)
    if meta.speaker_norm is not None and meta.speaker_norm["trained"]:
        raise ValueError(f"{model_dir}: trained with normalize: speaker; its reference comes from its training")
    if meta.finetuned_layers or meta.encoder_layers != config.encoder_layers or config.trainable_layers:
        raise ValueError(f"{model_dir}: the reference is read from the frozen-layer cache, which needs a model "
                         f"with every encoder layer frozen and encoder_layers {config.encoder_layers} as in the "
                         f"recipe (model: {meta.encoder_layers}, fine-tuned {meta.finetuned_layers})")
    if learns_layer_mix(meta.mix_layers, meta.layer_join):
        raise ValueError(f"{model_dir}: the model reads a learned mix of encoder layers {meta.mix_layers}; stream "
                         "centring works on features the head reads block by block")
    if list(meta.mix_layers) != list(config.mix_layers) or (meta.mix_layers and meta.layer_join != config.layer_join):
        raise ValueError(f"{model_dir}: the model reads encoder blocks {list(blocks_read(meta))} "
                         f"({meta.layer_join}); set the recipe's mix_layers and layer_join to match (got "
                         f"{config.mix_layers}, {config.layer_join}), the cache is opened at those blocks")
    from trainer.train import prepare  # trainer.train imports this module

    data = prepare(config, manifest)
    corpora = sorted(meta.training.get("corpora") or []) or None
    reference, count = training_reference(data, corpora)
    log.info("reference over %d clips of %s", count, corpora or "every corpus")
    meta.speaker_norm = {"reference": [float(v) for v in reference], "trained": False}
    update_meta(model_dir, meta, tensors)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.speaker_norm", description="Add the stream "
                                     "adaptation reference (edge_ser.centring) to a model trained without it.")
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder, rewritten in place")
    parser.add_argument("--config", default=None, help="recipe YAML (the cache key depends on it)")
    parser.add_argument("--manifest", required=True, help="the manifest the model was trained from")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        meta = add_reference(args.model, load_config(args.config, args.overrides), args.manifest)
    except (CheckpointError, ConfigError, ManifestError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(f"{args.model}: speaker_norm reference over {sorted(meta.training.get('corpora') or ['every corpus'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
