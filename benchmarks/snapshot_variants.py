"""Which of a training run's epochs to keep, and how to combine them, measured on LOCO's held-out corpora.

A LOCO run trained with ``--set keep_epochs=true`` keeps every epoch's model of every fold
(``fold-*/snapshots/epoch-NNN``, each with its dev 4-class UA). This script combines them in fixed ways and
scores each combination on the fold's held-out corpus (4-class UA, from the frozen-layer cache, as
``trainer.loco --rescore`` does):

* ``best k``: the k epochs with the best dev UA, their frame logits averaged (``trainer.ensemble.merge_heads``:
  one head k times wider; ``snapshots: k`` in the recipe);
* ``best k, weights``: the same epochs' weights averaged (``trainer.ensemble.average_weights``: one head);
* ``epochs >= 3``: every epoch from the fourth on (the run stops ``patience`` epochs after its best), logits
  or weights averaged (the latter is stochastic weight averaging at epoch granularity);
* ``lowest dev loss``: the one epoch with the lowest dev cross-entropy (``metrics.json``'s history) instead of
  the best dev UA, a different rule for choosing the checkpoint;
* ``best dev UA, 3 epochs``: the one epoch whose dev UA averaged with its neighbours' (the epochs before and
  after it that ran) is the best, so that a lone spike of the noisy dev curve is not what gets kept.

With several runs (seeds of one recipe) it also prints their mean and the runs merged fold by fold: each
variant's model of every run, frame logits averaged (``merge_heads``), as the shipped model merges seeds.
``best 1`` is the run's best epoch. A run trained with ``snapshots: k`` alone kept only its best k epochs:
the variants that need more are left blank for it. Prints one table per run and, with several runs, their mean.

    python benchmarks/snapshot_variants.py --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv \\
        --set label_mode=hard --set views=1 --set threads=1 runs/loco-keep-s0 runs/loco-keep-s1
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from edge_ser.checkpoint import load_checkpoint, save_checkpoint
from trainer.config import TrainConfig, load_config
from trainer.ensemble import Member, average_weights, merge_heads
from trainer.loco import rescore_fold
from trainer.train import RunData, prepare

FIRST_AVERAGED_EPOCH = 3
Combine = Callable[[Sequence[Member], str], Member]
VARIANTS: list[tuple[str, str, int | None, Combine | None]] = [
    # (name, selection, k, how the members combine); selection: best dev UA first, every epoch, lowest dev
    # loss first, or best smoothed dev UA first; k None = every epoch from FIRST_AVERAGED_EPOCH on
    ("best 1", "best", 1, None),
    ("best 2", "best", 2, merge_heads),
    ("best 3", "best", 3, merge_heads),
    ("best 5", "best", 5, merge_heads),
    ("best 3, weights", "best", 3, average_weights),
    ("best 5, weights", "best", 5, average_weights),
    (f"epochs >= {FIRST_AVERAGED_EPOCH}", "all", None, merge_heads),
    (f"epochs >= {FIRST_AVERAGED_EPOCH}, weights", "all", None, average_weights),
    ("lowest dev loss", "loss", 1, None),
    ("best dev UA, 3 epochs", "smooth", 1, None),
]
SMOOTH_RADIUS = 1  # epochs on each side averaged by the "smooth" selection


def _epochs(fold: Path) -> list[tuple[int, float, Member]]:
    """(epoch, dev UA, model) of every kept epoch, best dev UA first (an earlier epoch wins a tie)."""
    found = []
    for folder in sorted((fold / "snapshots").glob("epoch-*")):
        member = load_checkpoint(folder)
        found.append((int(member[0].training["epoch"]), float(member[0].metrics["dev_4class"]["ua"]), member))
    if not found:
        raise SystemExit(f"{fold}: no snapshots/epoch-* folders: train the LOCO run with --set keep_epochs=true")
    return sorted(found, key=lambda e: (-e[1], e[0]))


def _score(member: Member, config: TrainConfig, data: RunData, corpus: str, scratch: Path) -> float:
    """The held-out corpus's 4-class UA, scored as ``trainer.loco --rescore`` scores a fold."""
    save_checkpoint(scratch / "model", *member)
    return float(rescore_fold(config, data, corpus, scratch, frame_mean=False)["4class"]["ua"])


def _history(fold: Path) -> list[dict[str, Any]]:
    """The fold's per-epoch entries from its ``metrics.json``."""
    return json.loads((fold / "metrics.json").read_text())["history"]


def _by_dev_loss(fold: Path) -> list[int]:
    """The fold's epochs, lowest dev loss first (an earlier epoch wins a tie), from its ``metrics.json``."""
    scored = [(float(e["dev_loss"]), int(e["epoch"])) for e in _history(fold) if e.get("dev_loss") is not None]
    return [epoch for _, epoch in sorted(scored)]


def _by_smoothed_dev_ua(fold: Path) -> list[int]:
    """The fold's epochs, best dev UA averaged over the epoch and its ``SMOOTH_RADIUS`` neighbours on each side
    first (fewer at the ends of the run; an earlier epoch wins a tie), from its ``metrics.json``."""
    ua = {int(e["epoch"]): float(e["dev_ua"]) for e in _history(fold) if e.get("dev_ua") is not None}
    smoothed = [(-float(np.mean([ua[n] for n in range(e - SMOOTH_RADIUS, e + SMOOTH_RADIUS + 1) if n in ua])), e)
                for e in ua]
    return [epoch for _, epoch in sorted(smoothed)]


Table = dict[str, dict[str, float]]  # {variant: {corpus: 4-class UA}}


def _variants(fold: Path) -> dict[str, Member | None]:
    """Each variant's model for one fold of one run (None where the run did not keep the epochs it needs)."""
    epochs = _epochs(fold)
    every = yaml.safe_load((fold / "config.yaml").read_text()).get("keep_epochs", False)
    loaded = {e: member for e, _, member in epochs}
    out: dict[str, Member | None] = {}
    for name, selection, k, combine in VARIANTS:
        if selection == "best":
            chosen = [e for e, _, _ in epochs[:k]]
        elif selection == "loss":
            chosen = _by_dev_loss(fold)[:k]
        elif selection == "smooth":
            chosen = _by_smoothed_dev_ua(fold)[:k]
        else:
            chosen = sorted(e for e, _, _ in epochs if e >= FIRST_AVERAGED_EPOCH)
        if (not every and selection == "all") or len(chosen) < (k or 0) or any(e not in loaded for e in chosen):
            out[name] = None  # a run without keep_epochs kept only its best few
            continue
        members = [loaded[e] for e in chosen]
        out[name] = members[0] if combine is None or len(members) == 1 else combine(members, name)
    return out


def score_runs(runs: Sequence[Path], config: TrainConfig, data: RunData) -> tuple[dict[str, Table], Table]:
    """Per run, and for the runs merged fold by fold (each variant's models of every run, frame logits
    averaged: ``trainer.ensemble`` over seeds), the 4-class UA of every variant on every held-out corpus."""
    per_run: dict[str, Table] = {str(run): {name: {} for name, *_ in VARIANTS} for run in runs}
    merged: Table = {name: {} for name, *_ in VARIANTS}
    corpora = sorted(f.name.removeprefix("fold-") for f in runs[0].glob("fold-*"))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for corpus in tqdm(corpora, desc="folds", unit="fold"):
            variants = {str(run): _variants(run / f"fold-{corpus}") for run in runs}
            for name, *_ in VARIANTS:
                for run in runs:
                    member = variants[str(run)][name]
                    per_run[str(run)][name][corpus] = float("nan") if member is None else \
                        _score(member, config, data, corpus, scratch)
                members = [variants[str(run)][name] for run in runs]
                if len(runs) > 1 and all(m is not None for m in members):
                    merged[name][corpus] = _score(merge_heads(members, name), config, data, corpus, scratch)
                else:
                    merged[name][corpus] = float("nan")
    return per_run, merged


def _markdown(table: dict[str, dict[str, float]], title: str) -> str:
    corpora = sorted(next(iter(table.values())))
    lines = [f"### {title}", "", "| variant | " + " | ".join(corpora) + " | **mean UA** |",
             "|---|" + "---|" * (len(corpora) + 1)]
    for name, row in table.items():
        cells = " | ".join("" if np.isnan(row[c]) else f"{row[c]:.3f}" for c in corpora)
        lines.append(f"| {name} | {cells} | **{np.mean([row[c] for c in corpora]):.3f}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="LOCO run folders trained with keep_epochs=true")
    parser.add_argument("--config", default=None, help="the runs' recipe YAML")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="the runs' recipe overrides (the cache key depends on them)")
    parser.add_argument("--json", type=Path, default=None, help="also write {run: {variant: {corpus: UA}}}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config, args.overrides)
    data = prepare(config, args.manifest)
    tables, merged = score_runs(args.runs, config, data)
    for run, table in tables.items():
        print(_markdown(table, run))
    if len(tables) > 1:
        first = tables[str(args.runs[0])]
        mean = {name: {c: float(np.mean([t[name][c] for t in tables.values()])) for c in first[name]}
                for name, *_ in VARIANTS}
        print(_markdown(mean, f"mean of the {len(tables)} runs"))
        print(_markdown(merged, f"the {len(tables)} runs merged fold by fold (frame logits averaged over runs)"))
    if args.json:
        args.json.write_text(json.dumps({"runs": tables, "merged": merged}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
