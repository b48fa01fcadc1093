"""Leave-one-corpus-out: for each corpus, train on the others and evaluate on it (EVAL.md's headline).

    python -m trainer.loco --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv \\
        --out runs/loco-default [--set key=value ...] [--folds emodb,casia]

The frozen-layer cache is built once for the whole manifest and shared by every fold (and by every
ablation that keeps the same encoder layers and views). Each fold writes a run folder ``fold-<corpus>/``
(the training run, ``test.json`` in EVAL.md format with confusion PNGs, and ``test_logits.npy``);
``summary.json`` and ``summary.md`` hold the per-fold table and the mean UA over held-out corpora.

``--refit-from RUN`` trains each fold again on every speaker of its training corpora (no dev speakers) and
stops at the epoch that RUN's fold chose by dev UA, on the same learning-rate schedule: the dev run picks
how long to train, the refit uses the speakers the dev split held back.

With ``prosody.enabled`` each fold model carries a prosody classifier fitted on the fold's training clips
(trainer/prosody.py), and the held-out logits include its term (``test_logits.npy`` too); ``--rescore``
with it fits each fold model's classifier by the recipe given (replacing one fitted before, so that the
recipe's ``prosody`` settings are the ones scored). A merged run keeps its members' classifiers: fit them
into the members first, then merge again. ``stats.enabled`` does the same for the window-statistics
classifier (trainer/window_stats.py), whose term the model itself adds to its frame logits.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_ser.checkpoint import ModelMeta, read_meta
from trainer.config import ConfigError, TrainConfig, load_config
from trainer.data import Clip, ManifestError
from trainer.evaluate import build_model_from_checkpoint, predict_cached, predict_clips, report, write_report
from trainer.labels import LabelError
from trainer.metrics import score
from trainer.plots import safe_name
from trainer.speaker_norm import clip_offsets, stream_offsets, training_reference
from trainer.train import RunData, fit, prepare

log = logging.getLogger(__name__)

SUMMARY_PROTOCOLS = ("4class", "5class")
HISTORY_BINS = ((0.0, 1e-9), (1e-9, 15.0), (15.0, 60.0), (60.0, np.inf))  # seconds of the speaker heard before


def fold_split(config: TrainConfig, data: RunData, corpus: str, refit_epoch: int | None = None
               ) -> tuple[TrainConfig, list[int], list[int]]:
    """The fold's recipe (``corpus`` left out; a refit: no dev split, stopped at ``refit_epoch``) and its
    training and dev clips."""
    update: dict[str, Any] = {"exclude_corpora": [*config.exclude_corpora, corpus]}
    if refit_epoch is not None:
        update.update(dev_fraction=0.0, last_epoch=refit_epoch)
    fold_config = TrainConfig.model_validate({**config.model_dump(), **update})
    return fold_config, *data.split(fold_config)


def trained_split(fold: Path, data: RunData) -> list[int]:
    """The training clips a fold's model was trained on, from the recipe it saved (``config.yaml``: its
    seed, corpus filters and dev split), whatever recipe the caller runs now."""
    settings = fold / "config.yaml"
    if not settings.is_file():
        raise FileNotFoundError(f"{settings} does not exist (a LOCO fold's training run is needed)")
    return data.split(load_config(settings))[0]


def run_fold(config: TrainConfig, data: RunData, corpus: str, out: Path, refit_epoch: int | None = None
             ) -> dict[str, Any]:
    """Train without ``corpus``, evaluate the best checkpoint on it; return the fold's summary row.
    ``refit_epoch``: train on every speaker (no dev split) and keep the model of that epoch."""
    fold_config, train_idx, dev_idx = fold_split(config, data, corpus, refit_epoch)
    log.info("fold %s: train %d clips, dev %d clips", corpus, len(train_idx), len(dev_idx))
    result = fit(fold_config, data, train_idx, dev_idx, out)
    test_idx = [i for i in data.usable if data.manifest.clips[i].corpus == corpus]
    model, meta = build_model_from_checkpoint(result.model_dir, config.base_dir)
    if data.cache is not None:
        offsets, _ = test_offsets(data, meta, test_idx, corpus, Centring())
        logits = predict_cached(model, data.cache.views[0], test_idx, config.frozen_layers, offsets=offsets)
    else:
        logits, _ = predict_clips(model, [data.manifest.clips[i] for i in test_idx], config.max_clip_s,
                                  params=config.feature_params)
    logits = logits + data.prosody_bias(config, result.model_dir, test_idx)
    np.save(out / "test_logits.npy", logits, allow_pickle=False)
    clips = [data.manifest.clips[i] for i in test_idx]
    row: dict[str, Any] = {"corpus": corpus, "train_clips": len(train_idx), "dev_clips": len(dev_idx),
                           "best_epoch": result.best_epoch,
                           "dev_ua": None if np.isnan(result.dev.get("ua", np.nan)) else result.dev["ua"]}
    for protocol in SUMMARY_PROTOCOLS:
        rep = report(logits, clips, meta.labels, protocol, False, str(result.model_dir), str(data.manifest.path))
        if not rep["corpora"]:
            continue
        suffix = "" if protocol == "4class" else f".{protocol}"
        write_report(rep, out / f"test{suffix}.json")
        entry = rep["corpora"][corpus]
        row[protocol] = {k: entry[k] for k in ("n", "ua", "macro_f1", "wa", "ece")}
    return row


def refit_epoch(dev_run: Path, corpus: str, config: TrainConfig) -> int:
    """The epoch that ``dev_run``'s fold for ``corpus`` kept by dev UA (its ``metrics.json``), checked to come
    from the same schedule as ``config``'s."""
    fold = dev_run / f"fold-{safe_name(corpus)}"
    metrics, settings = fold / "metrics.json", fold / "config.yaml"
    for path in (metrics, settings):
        if not path.is_file():
            raise FileNotFoundError(f"--refit-from: {path} does not exist (a LOCO run's fold, trained with dev "
                                    "speakers, is needed)")
    trained = load_config(settings)
    for key in ("epochs", "lr", "min_lr_ratio"):
        if getattr(trained, key) != getattr(config, key):
            raise ValueError(f"--refit-from: {settings} has {key} {getattr(trained, key)!r}, this recipe "
                             f"{getattr(config, key)!r}: the refit must follow the dev run's schedule")
    if not trained.dev_fraction:
        raise ValueError(f"--refit-from: {settings} has no dev speakers (dev_fraction {trained.dev_fraction!r})"
                         ": its epochs were not chosen by dev UA")
    return int(json.loads(metrics.read_text())["best"]["epoch"])


CENTRE_MODES = ("none", "clip", "speaker", "stream", "stream-grouped")


@dataclass(frozen=True)
class Centring:
    """How held-out clips are centred at test time (trainer/speaker_norm.py). ``mode``: ``auto`` (as the model
    was trained: ``speaker`` for a model trained centred, else ``none``); ``none`` (each clip as it is: the
    zero-shot figure); ``clip`` (each clip on its own mean, shrunk toward the reference with ``prior_s``
    seconds: still zero-shot, it uses nothing but the clip); ``speaker`` (each speaker's mean over all their
    clips); ``stream`` / ``stream-grouped`` (causal, from the speaker's earlier clips only, shrunk toward the
    reference with ``prior_s`` seconds; ``speaker_norm.stream_offsets``)."""

    mode: str = "auto"
    prior_s: float = 30.0
    seed: int = 0


def test_offsets(data: RunData, meta: ModelMeta, test_idx: list[int], corpus: str, centring: Centring
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Offsets (N, D) of the held-out clips and, for the stream modes, each clip's speaker history in seconds.
    The reference is the model's own (``speaker_norm``) when it carries one, else the mean over the other
    corpora's clips."""
    trained_centred = meta.speaker_norm is not None and meta.speaker_norm["trained"]
    mode = centring.mode if centring.mode != "auto" else "speaker" if trained_centred else "none"
    if mode == "none":
        return None, None
    if meta.speaker_norm is not None:
        reference = np.asarray(meta.speaker_norm["reference"], dtype=np.float32)
    else:
        others = sorted({data.manifest.clips[i].corpus for i in data.usable} - {corpus})
        reference, _ = training_reference(data, others)
    if mode == "speaker":
        return data.centring(test_idx, reference), None
    rows = np.asarray(test_idx, dtype=np.int64)
    if data.cache is None:
        raise ValueError(f"centring mode {mode!r} needs the cache (cache: true)")
    if mode == "clip":
        return clip_offsets(data.speaker_means()[rows], data.cache.views[0].length[rows], reference,
                            centring.prior_s), None
    order = "grouped" if mode == "stream-grouped" else "shuffled"
    return stream_offsets(data.manifest.clips, test_idx, data.speaker_means()[rows], data.cache.views[0].length[rows],
                          reference, centring.prior_s, centring.seed, order)


def adaptation(logits: np.ndarray, plain: np.ndarray, clips: list[Clip], classes: list[str], history: np.ndarray
               ) -> list[dict[str, Any]]:
    """4-class UA of the held-out clips by how much of their speaker the stream had heard before them, centred
    (``ua``) and, on the same clips, uncentred (``ua_plain``): the bins hold different clips, so compare
    within a bin."""
    out = []
    for low, high in HISTORY_BINS:
        keep = (history >= low) & (history < high)
        kept = [c for c, k in zip(clips, keep, strict=True) if k]
        entry: dict[str, Any] = {"history_s": [low, None if high == np.inf else high], "n": 0, "ua": None,
                                 "ua_plain": None}
        for key, values in (("ua", logits), ("ua_plain", plain)):
            scored = score(values[keep], [c.emotion for c in kept], [c.corpus for c in kept], classes, "4class",
                           False)
            found = next(iter(scored.values()), None)
            if found:
                entry["n"], entry[key] = found["n"], found["ua"]
        out.append(entry)
    return out


def rescore_fold(config: TrainConfig, data: RunData, corpus: str, out: Path, frame_mean: bool,
                 centring: Centring = Centring()) -> dict[str, Any]:
    """Score an existing fold's checkpoint on its held-out corpus again (no training; also a merged ensemble's
    folds, ``trainer.ensemble``, whose dev UA is the mean of its members'); ``centring``: how held-out speakers
    are centred (``test_offsets``)."""
    test_idx = [i for i in data.usable if data.manifest.clips[i].corpus == corpus]
    if data.cache is None:
        raise ValueError("--rescore needs the cache (cache: true)")
    trained = (out / "metrics.json").is_file()  # a training run's fold: its classifiers are fitted by this recipe
    present = read_meta(out / "model")
    for kind, enabled, add in (("prosody", config.prosody.enabled, data.add_prosody),
                               ("stats", config.stats.enabled, data.add_stats)):
        if enabled and trained:
            add(config, out / "model", trained_split(out, data))
            log.info("fold %s: %s classifier fitted into %s", corpus, kind, out / "model")
        elif enabled and getattr(present, kind) is None:
            raise ValueError(f"{out / 'model'}: a merged model without a {kind} classifier; add one to its "
                             f"members (--rescore with {kind}.enabled) and merge them again")
    model, meta = build_model_from_checkpoint(out / "model", config.base_dir)
    offsets, history = test_offsets(data, meta, test_idx, corpus, centring)
    prosody_term = data.prosody_bias(config, out / "model", test_idx)
    logits = predict_cached(model, data.cache.views[0], test_idx, config.frozen_layers, frame_mean=frame_mean,
                            offsets=offsets) + prosody_term
    clips = [data.manifest.clips[i] for i in test_idx]
    if (out / "metrics.json").is_file():  # a training run; a merged ensemble (trainer.ensemble) has none
        best = json.loads((out / "metrics.json").read_text())["best"]
    else:
        dev = [x for x in meta.metrics.get("dev_4class_members") or [] if x is not None]
        epochs = "+".join(str(m.get("epoch")) for m in meta.training.get("ensemble", []))
        best = {"epoch": epochs or None, "ua": float(np.mean(dev)) if dev else None}
    row: dict[str, Any] = {"corpus": corpus, "train_clips": meta.training.get("train_clips"),
                           "dev_clips": meta.training.get("dev_clips"), "best_epoch": best["epoch"],
                           "dev_ua": best["ua"]}
    for protocol in SUMMARY_PROTOCOLS:
        rep = report(logits, clips, meta.labels, protocol, False, str(out / "model"), str(data.manifest.path))
        if rep["corpora"]:
            entry = rep["corpora"][corpus]
            row[protocol] = {k: entry[k] for k in ("n", "ua", "macro_f1", "wa", "ece")}
    if history is not None:
        plain = predict_cached(model, data.cache.views[0], test_idx, config.frozen_layers,
                               frame_mean=frame_mean) + prosody_term
        row["adaptation"] = adaptation(logits, plain, clips, meta.labels, history)
    return row


def summarize(rows: list[dict[str, Any]], command: str) -> tuple[dict[str, Any], str]:
    """``summary.json`` content and the markdown table (mean = equal weight over held-out corpora)."""
    mean: dict[str, dict[str, float]] = {}
    for protocol in SUMMARY_PROTOCOLS:
        present = [r[protocol] for r in rows if protocol in r]
        if present:
            mean[protocol] = {k: float(np.mean([p[k] for p in present])) for k in ("ua", "macro_f1", "wa", "ece")}
    def cell(entry: dict[str, Any] | None, key: str) -> str:
        return "-" if not entry or entry[key] is None else f"{entry[key]:.3f}"

    lines = [f"`{command}`", "",
             "| held-out corpus | n (4-class) | UA | macro-F1 | WA | ECE | 5-class UA | best epoch | dev UA |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        four, five = r.get("4class"), r.get("5class")
        dev = "-" if r["dev_ua"] is None else f"{r['dev_ua']:.3f}"
        lines.append(f"| {r['corpus']} | {four['n'] if four else 0} | {cell(four, 'ua')} | {cell(four, 'macro_f1')} "
                     f"| {cell(four, 'wa')} | {cell(four, 'ece')} | {cell(five, 'ua')} | {r['best_epoch']} | {dev} |")
    m4, m5 = mean.get("4class"), mean.get("5class")
    lines.append(f"| **mean** | | **{cell(m4, 'ua')}** | {cell(m4, 'macro_f1')} | {cell(m4, 'wa')} | "
                 f"{cell(m4, 'ece')} | {cell(m5, 'ua')} | | |")
    summary: dict[str, Any] = {"command": command, "folds": rows, "mean": mean}
    curves = [r["adaptation"] for r in rows if "adaptation" in r]
    if curves:
        summary["adaptation_mean"] = _adaptation_mean(curves)
        lines += ["", "4-class UA by the speaker's audio heard before the clip (stream centring / the same clips "
                  "uncentred; clips in brackets):", "",
                  "| history | " + " | ".join(r["corpus"] for r in rows if "adaptation" in r) + " | **mean** |",
                  "|---|" + "---|" * (len(curves) + 1)]
        for k, entry in enumerate(summary["adaptation_mean"]):
            low, high = entry["history_s"]
            name = "none" if low == 0 else f"{low:.0f}-{high:.0f} s" if high is not None else f">= {low:.0f} s"
            cells = [f"{c[k]['ua']:.3f} / {c[k]['ua_plain']:.3f} ({c[k]['n']})" if c[k]["ua"] is not None else "-"
                     for c in curves]
            mean_cell = f"**{cell(entry, 'ua')} / {cell(entry, 'ua_plain')}**"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean_cell} |")
    return summary, "\n".join(lines) + "\n"


def _adaptation_mean(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per history bin: the mean UA (centred and uncentred) over the corpora that have clips in it."""
    out = []
    for k, first in enumerate(curves[0]):
        present = [c[k] for c in curves if c[k]["ua"] is not None]
        out.append({"history_s": first["history_s"], "corpora": len(present),
                    "ua": float(np.mean([p["ua"] for p in present])) if present else None,
                    "ua_plain": float(np.mean([p["ua_plain"] for p in present])) if present else None})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.loco", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="recipe YAML")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True, help="folder for the folds and the summary")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--folds", default=None, help="comma-separated corpora to hold out (default: all)")
    parser.add_argument("--skip-bad", action="store_true")
    parser.add_argument("--rescore", action="store_true", help="no training: score the fold checkpoints already "
                        "in --out again, into summary.rescored.{json,md}")
    parser.add_argument("--frame-mean", action="store_true", help="with --rescore: pool clips by the plain mean "
                        "of frame logits (what per-second scores average) instead of the head's pooling")
    parser.add_argument("--centre", choices=CENTRE_MODES, default=None, help="with --rescore: centre held-out "
                        "clips or speakers at test time (trainer/speaker_norm.py): clip: each clip on its own "
                        "mean (zero-shot); the others are speaker-adaptive figures, not zero-shot: speaker: on "
                        "each speaker's mean over all their clips; stream: causally, on the mean of "
                        "the speaker's earlier clips in a seeded order; stream-grouped: the same with each "
                        "emotion's clips in a row. Writes summary.centre-<mode>.{json,md}")
    parser.add_argument("--prior-s", type=float, default=30.0, help="clip and stream modes: seconds of the "
                        "training mean the clip's or running mean is shrunk toward (default 30, as the agent's)")
    parser.add_argument("--stream-seed", type=int, default=0, help="stream modes: seed of the clip order")
    parser.add_argument("--refit-from", type=Path, default=None, metavar="RUN", help="train each fold on every "
                        "speaker of its training corpora (no dev split) up to the epoch RUN's fold chose by dev UA "
                        "(RUN: a LOCO run of the same schedule)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = shlex.join(["python", "-m", "trainer.loco", *(sys.argv[1:] if argv is None else argv)])
    try:
        config = load_config(args.config, [*args.overrides, *(["skip_bad=true"] if args.skip_bad else [])])
        if config.threads:
            torch.set_num_threads(config.threads)
        data = prepare(config, args.manifest)
        corpora = sorted({data.manifest.clips[i].corpus for i in data.usable})
        folds = corpora if args.folds is None else [c.strip() for c in args.folds.split(",") if c.strip()]
        unknown = sorted(set(folds) - set(corpora))
        if unknown:
            raise ValueError(f"--folds {unknown} are not corpora of the manifest ({corpora})")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        if args.centre and not args.rescore:
            raise ValueError("--centre goes with --rescore (to train centred: --set normalize=speaker)")
        if args.refit_from and args.rescore:
            raise ValueError("--refit-from trains: it does not go with --rescore")
        # every fold's epoch is read before the first fold trains, so a bad RUN fails at once
        refit_epochs = {c: refit_epoch(args.refit_from, c, config) for c in folds} if args.refit_from else {}
        centring = Centring(args.centre or "auto", args.prior_s, args.stream_seed)
        stem = (f"summary.centre-{args.centre}" if args.centre else "summary.rescored" if args.rescore
                else "summary")
        for corpus in folds:
            fold_dir = out / f"fold-{safe_name(corpus)}"
            if args.rescore:
                rows.append(rescore_fold(config, data, corpus, fold_dir, args.frame_mean, centring))
            else:
                rows.append(run_fold(config, data, corpus, fold_dir, refit_epochs.get(corpus)))
            summary, table = summarize(rows, command)
            (out / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
            (out / f"{stem}.md").write_text(table)
            log.info("fold %s: 4-class UA %.4f", corpus, rows[-1].get("4class", {}).get("ua", float("nan")))
    except (ConfigError, LabelError, ManifestError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
