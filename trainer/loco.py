"""Leave-one-corpus-out: for each corpus, train on the others and evaluate on it (EVAL.md's headline).

    python -m trainer.loco --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv \\
        --out runs/loco-default [--set key=value ...] [--folds emodb,casia]

The frozen-layer cache is built once for the whole manifest and shared by every fold (and by every
ablation that keeps the same encoder layers and views). Each fold writes a run folder ``fold-<corpus>/``
(the training run, ``test.json`` in EVAL.md format with confusion PNGs, and ``test_logits.npy``);
``summary.json`` and ``summary.md`` hold the per-fold table and the mean UA over held-out corpora.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import ConfigError, TrainConfig, load_config
from trainer.data import ManifestError, speaker_split
from trainer.evaluate import build_model_from_checkpoint, predict_cached, predict_clips, report, write_report
from trainer.labels import LabelError
from trainer.plots import safe_name
from trainer.train import RunData, fit, prepare, training_indices

log = logging.getLogger(__name__)

SUMMARY_PROTOCOLS = ("4class", "5class")


def run_fold(config: TrainConfig, data: RunData, corpus: str, out: Path) -> dict[str, Any]:
    """Train without ``corpus``, evaluate the best checkpoint on it; return the fold's summary row."""
    fold_config = config.model_copy(update={"exclude_corpora": [*config.exclude_corpora, corpus]})
    indices = training_indices(fold_config, data)
    train_idx, dev_idx = speaker_split(data.manifest.clips, indices, config.dev_fraction, config.dev_min_speakers,
                                       config.seed)
    log.info("fold %s: train %d clips, dev %d clips", corpus, len(train_idx), len(dev_idx))
    result = fit(fold_config, data, train_idx, dev_idx, out)
    test_idx = [i for i in data.usable if data.manifest.clips[i].corpus == corpus]
    model, meta = build_model_from_checkpoint(result.model_dir, config.base_dir)
    if data.cache is not None:
        logits = predict_cached(model, data.cache.views[0], test_idx, config.frozen_layers)
    else:
        logits, _ = predict_clips(model, [data.manifest.clips[i] for i in test_idx], config.max_clip_s,
                                  params=config.feature_params)
    np.save(out / "test_logits.npy", logits, allow_pickle=False)
    clips = [data.manifest.clips[i] for i in test_idx]
    row: dict[str, Any] = {"corpus": corpus, "train_clips": len(train_idx), "dev_clips": len(dev_idx),
                           "best_epoch": result.best_epoch, "dev_ua": result.dev.get("ua")}
    for protocol in SUMMARY_PROTOCOLS:
        rep = report(logits, clips, meta.labels, protocol, False, str(result.model_dir), str(data.manifest.path))
        if not rep["corpora"]:
            continue
        suffix = "" if protocol == "4class" else f".{protocol}"
        write_report(rep, out / f"test{suffix}.json")
        entry = rep["corpora"][corpus]
        row[protocol] = {k: entry[k] for k in ("n", "ua", "macro_f1", "wa", "ece")}
    return row


def rescore_fold(config: TrainConfig, data: RunData, corpus: str, out: Path, frame_mean: bool) -> dict[str, Any]:
    """Score an existing fold's checkpoint on its held-out corpus again (no training; also a merged ensemble's
    folds, ``trainer.ensemble``, whose dev UA is the mean of its members')."""
    model, meta = build_model_from_checkpoint(out / "model", config.base_dir)
    test_idx = [i for i in data.usable if data.manifest.clips[i].corpus == corpus]
    if data.cache is None:
        raise ValueError("--rescore needs the cache (cache: true)")
    logits = predict_cached(model, data.cache.views[0], test_idx, config.frozen_layers, frame_mean=frame_mean)
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
    return row


def summarize(rows: list[dict[str, Any]], command: str) -> tuple[dict[str, Any], str]:
    """``summary.json`` content and the markdown table (mean = equal weight over held-out corpora)."""
    mean: dict[str, dict[str, float]] = {}
    for protocol in SUMMARY_PROTOCOLS:
        present = [r[protocol] for r in rows if protocol in r]
        if present:
            mean[protocol] = {k: float(np.mean([p[k] for p in present])) for k in ("ua", "macro_f1", "wa", "ece")}
    def cell(entry: dict[str, Any] | None, key: str) -> str:
        return "-" if not entry else f"{entry[key]:.3f}"

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
    return {"command": command, "folds": rows, "mean": mean}, "\n".join(lines) + "\n"


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
        stem = "summary.rescored" if args.rescore else "summary"
        for corpus in folds:
            fold_dir = out / f"fold-{safe_name(corpus)}"
            rows.append(rescore_fold(config, data, corpus, fold_dir, args.frame_mean) if args.rescore
                        else run_fold(config, data, corpus, fold_dir))
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
