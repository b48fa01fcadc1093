"""Average several trained emotion models into one model of the same shape: an exact merge of frame heads.

    python -m trainer.ensemble --out models/ens MODEL_A MODEL_B MODEL_C [--model-id ID]
    python -m trainer.ensemble --out runs/loco-ens LOCO_A LOCO_B LOCO_C    # LOCO folders, fold by fold

Members that share the (frozen) encoder differ only in their final LayerNorm affine and their frame head
``fc2(gelu(fc1(norm(x))))``. The mean of their frame logits is itself one frame head, so an ensemble costs
one wider head (K x hidden units), not K models, and runs unchanged on every engine:

* every member's LayerNorm affine ``n * g + b`` is folded into its ``fc1``: ``W1 diag(g)`` and ``c1 + W1 b``,
  so the merged model's ``norm`` is the plain normalisation (weight 1, bias 0) all members share;
* the members' ``fc1`` are stacked (hidden units side by side) and their ``fc2`` laid side by side and
  divided by K, with the mean of their biases.

Frame logits (and therefore clip logits, their mean) of the merged model equal the mean of the members'
logits up to float rounding (``tests/test_ensemble.py``).

Members may read different encoder blocks (a head on block 2, ``encoder_layers: 2``, and one on block 3): the
merged model then runs the encoder to the deepest of them and reads every block any member reads side by
side (``mix_layers`` = their union, ``layer_join: concat``), each member's ``fc1`` taking zeros for the blocks
it does not read. Members with prosody classifiers (edge_ser/prosody.py) keep them side by side: the merged
model's prosody term averages their log-probabilities; so do window-statistics classifiers
(edge_ser/window_stats.py), kept in the LayerNorm's unscaled space that the folding does not change. Members
must agree on labels, base, features, class prior and the fusion weights (all or none with a prosody
classifier, all or none with a window-statistics classifier), have a ``frame`` head, no
fine-tuned encoder layers and no learned layer mix; anything else is refused with the member and the
difference named.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from edge_ser.checkpoint import (
    CheckpointError,
    ModelMeta,
    blocks_read,
    learns_layer_mix,
    load_checkpoint,
    save_checkpoint,
)
from edge_ser.linear_probe import LinearProbe
from edge_ser.prosody import ProsodyHead
from edge_ser.window_stats import StatsHead

log = logging.getLogger(__name__)

Member = tuple[ModelMeta, dict[str, np.ndarray]]
P = TypeVar("P", bound=LinearProbe)
_SHARED_FIELDS = ("labels", "features", "base", "class_log_prior", "speaker_norm", "prosody", "stats")


def _check_members(members: Sequence[Member], names: Sequence[str]) -> None:
    if len(members) < 2:
        raise CheckpointError(f"an ensemble needs at least 2 members, got {len(members)}")
    first, _ = members[0]
    for (meta, _), name in zip(members, names, strict=True):
        if meta.head.get("type") != "frame":
            raise CheckpointError(f"{name}: head type {meta.head.get('type')!r} cannot be merged (only 'frame': "
                                  "its clip score is the mean of frame logits)")
        if meta.finetuned_layers:
            raise CheckpointError(f"{name}: fine-tuned encoder layers {meta.finetuned_layers} differ per member; "
                                  "only models over the same frozen encoder can be merged")
        if learns_layer_mix(meta.mix_layers, meta.layer_join):
            raise CheckpointError(f"{name}: its learned mix of encoder layers {meta.mix_layers} differs per member; "
                                  "only models that read the same features can be merged")
        for key in _SHARED_FIELDS:
            if getattr(meta, key) != getattr(first, key):
                raise CheckpointError(f"{name}: {key} {getattr(meta, key)!r:.80} differs from {names[0]}'s "
                                      f"{getattr(first, key)!r:.80}")


def _dev_ua(meta: ModelMeta) -> float | None:
    """The member's dev 4-class UA (the mean of its own members' when it is a merged ensemble itself)."""
    dev = meta.metrics.get("dev_4class") or {}
    if dev.get("ua") is not None:
        return float(dev["ua"])
    nested = [x for x in meta.metrics.get("dev_4class_members") or [] if x is not None]
    return float(np.mean(nested)) if nested else None


def merge_heads(members: Sequence[Member], model_id: str, names: Sequence[str] | None = None) -> Member:
    """One checkpoint whose frame logits are the mean of the members' frame logits (see the module doc)."""
    names = list(names) if names is not None else [meta.model_id for meta, _ in members]
    _check_members(members, names)
    union = sorted({block for meta, _ in members for block in blocks_read(meta)})
    if len(union) > 1 and members[0][0].speaker_norm is not None:
        raise CheckpointError(f"the members read encoder blocks {union} between them and carry a stream centring "
                              "reference (speaker_norm), which belongs to one block's features: merge members "
                              "trained without it, or members that read the same block")
    if members[0][0].stats is not None and any(list(blocks_read(meta)) != union for meta, _ in members):
        raise CheckpointError(f"the members read encoder blocks {union} between them and carry window-statistics "
                              "classifiers, each fitted on its own blocks' features: merge members that read the "
                              "same blocks, or members without them")
    d_model = members[0][1]["norm.weight"].shape[0]
    fc1_w, fc1_b, fc2_w = [], [], []
    for meta, t in members:
        w1 = t["head.fc1.weight"].astype(np.float64)
        blocks = blocks_read(meta)  # the LayerNorm is applied to each block side by side
        g, b = (np.tile(t[f"norm.{n}"].astype(np.float64), len(blocks)) for n in ("weight", "bias"))
        scaled = w1 * g[None, :]
        placed = np.zeros((w1.shape[0], len(union) * d_model))
        for k, block in enumerate(blocks):
            at = union.index(block) * d_model
            placed[:, at:at + d_model] = scaled[:, k * d_model:(k + 1) * d_model]
        fc1_w.append(placed)
        fc1_b.append(t["head.fc1.bias"].astype(np.float64) + w1 @ b)
        fc2_w.append(t["head.fc2.weight"].astype(np.float64))
    k = len(members)
    tensors = {
        "norm.weight": np.ones(d_model, np.float32),
        "norm.bias": np.zeros(d_model, np.float32),
        "head.fc1.weight": np.concatenate(fc1_w, axis=0).astype(np.float32),
        "head.fc1.bias": np.concatenate(fc1_b).astype(np.float32),
        "head.fc2.weight": (np.concatenate(fc2_w, axis=1) / k).astype(np.float32),
        "head.fc2.bias": np.mean([t["head.fc2.bias"].astype(np.float64) for _, t in members], axis=0)
        .astype(np.float32),
    }
    first = members[0][0]
    member_info = [{"model_id": m.model_id, "weights_sha256": m.weights_sha256,
                    "seed": m.training.get("config", {}).get("seed"), "epoch": m.training.get("epoch"),
                    "dev_ua": _dev_ua(m), "blocks": list(blocks_read(m)), "source": name}
                   for (m, _), name in zip(members, names, strict=True)]
    dev = [_dev_ua(m) for m, _ in members]
    prosody = _merged_probe(members, ProsodyHead)
    stats = _merged_probe(members, StatsHead)
    for probe in (prosody, stats):
        if probe is not None:
            tensors |= probe.tensors()
    meta = ModelMeta(
        model_id=model_id, labels=list(first.labels), encoder_layers=union[-1],
        mix_layers=union if len(union) > 1 else [], layer_join="concat" if len(union) > 1 else "mix",
        head={**first.head, "hidden": int(tensors["head.fc1.weight"].shape[0])}, features=dict(first.features),
        base=dict(first.base), class_log_prior=first.class_log_prior, window=dict(first.window),
        speaker_norm=first.speaker_norm, training={**first.training, "ensemble": member_info},
        metrics={"dev_4class_members": dev}, prosody=None if prosody is None else prosody.meta(),
        stats=None if stats is None else stats.meta(),
    )
    return meta, tensors


def _merged_probe(members: Sequence[Member], probe: type[P]) -> P | None:
    """The members' ``probe`` classifiers side by side (their log-probabilities averaged); None when they have
    none (``_check_members`` has made sure that all or none have one, with one fusion weight)."""
    field = probe.prefix
    if getattr(members[0][0], field) is None:
        return None
    return probe.merge([probe.from_tensors(getattr(meta, field), t) for meta, t in members])


def average_weights(members: Sequence[Member], model_id: str, names: Sequence[str] | None = None) -> Member:
    """One checkpoint whose every tensor is the mean of the members' (a weight average, "model soup"): the
    runtime cost of one member, but exact only for members near each other in weight space, e.g. epochs of
    one run; members of different seeds should be merged with :func:`merge_heads` instead."""
    names = list(names) if names is not None else [meta.model_id for meta, _ in members]
    _check_members(members, names)
    first_meta, first = members[0]
    for (meta, tensors), name in zip(members, names, strict=True):
        if blocks_read(meta) != blocks_read(first_meta):
            raise CheckpointError(f"{name}: reads encoder blocks {list(blocks_read(meta))}, {names[0]} "
                                  f"{list(blocks_read(first_meta))}; weights average only between heads on the "
                                  "same features")
        shapes = {k: v.shape for k, v in tensors.items()}
        if shapes != {k: v.shape for k, v in first.items()}:
            raise CheckpointError(f"{name}: tensors {shapes} differ from {names[0]}'s; weights average only "
                                  "between models of the same shape")
    averaged = {key: np.mean([t[key].astype(np.float64) for _, t in members], axis=0).astype(np.float32)
                for key in first}
    member_info = [{"model_id": m.model_id, "epoch": m.training.get("epoch"), "dev_ua": _dev_ua(m), "source": name}
                   for (m, _), name in zip(members, names, strict=True)]
    meta = ModelMeta(
        model_id=model_id, labels=list(first_meta.labels), encoder_layers=first_meta.encoder_layers,
        head=dict(first_meta.head), features=dict(first_meta.features), base=dict(first_meta.base),
        class_log_prior=first_meta.class_log_prior, window=dict(first_meta.window),
        speaker_norm=first_meta.speaker_norm, training={**first_meta.training, "weight_average": member_info},
        metrics={"dev_4class_members": [_dev_ua(m) for m, _ in members]}, prosody=first_meta.prosody,
        stats=first_meta.stats,
    )
    return meta, averaged


def merge_folders(folders: Sequence[Path], out: Path, model_id: str) -> Path:
    """Load the member checkpoint folders, merge them, save into ``out``."""
    members = [load_checkpoint(folder) for folder in folders]
    meta, tensors = merge_heads(members, model_id, [str(f) for f in folders])
    return save_checkpoint(out, meta, tensors)


def _fold_models(loco_dir: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted(loco_dir.glob("fold-*/model")) if p.is_dir()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("members", nargs="+", help="model folders, or LOCO run folders (with fold-*/model) "
                        "merged fold by fold")
    parser.add_argument("--out", required=True, help="the merged model folder (or LOCO folder)")
    parser.add_argument("--model-id", default=None, help="default: ensemble-of-<K>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folders = [Path(m) for m in args.members]
    out = Path(args.out)
    model_id = args.model_id or f"ensemble-of-{len(folders)}"
    command = shlex.join(["python", "-m", "trainer.ensemble", *(sys.argv[1:] if argv is None else argv)])
    try:
        loco = [_fold_models(f) for f in folders]
        if all(loco):
            folds = sorted(set.intersection(*(set(x) for x in loco)))
            missing = {str(f): sorted(set(x) - set(folds)) for f, x in zip(folders, loco, strict=True)
                       if set(x) - set(folds)}
            if not folds:
                raise CheckpointError(f"the LOCO folders {[str(f) for f in folders]} have no fold in common")
            if missing:
                log.warning("folds not in every member, left out: %s", missing)
            for fold in folds:
                path = merge_folders([x[fold] for x in loco], out / fold / "model", f"{model_id}-{fold}")
                log.info("%s: merged %d members -> %s", fold, len(folders), path)
            (out / "ensemble-command.txt").write_text(command + "\n")
        elif any(loco):
            raise CheckpointError("give either model folders or LOCO folders, not both: "
                                  + ", ".join(f"{f} ({'LOCO' if x else 'model'})" for f, x in
                                              zip(folders, loco, strict=True)))
        else:
            log.info("merged -> %s", merge_folders(folders, out, model_id))
    except (CheckpointError, OSError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
