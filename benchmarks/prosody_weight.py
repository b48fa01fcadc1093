"""The prosody fusion weight, swept over LOCO runs that were trained without it.

For each fold of each run, the prosody classifier is fitted on the fold's own training clips (its saved
recipe's seed and speaker split, ``trainer.loco.trained_split``; ``RunData.add_prosody``'s targets, weights
and ``prosody.fit_trim_db``) and its log-probabilities on the held-out corpus, times each weight of
--weights, are added to the fold's saved ``test_logits.npy``. Prints the 4-class UA of every fold and the
mean (and the prosody classifier's own), per run, and for the runs merged fold by fold (logits and prosody
log-probabilities each averaged over the runs, as ``trainer.ensemble`` merges models). Weight 0 is the run
as it was. The functionals come from the cache ``trainer.loco`` uses (computed on first use).

    python benchmarks/prosody_weight.py --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv \\
        --set label_mode=hard --set views=1 runs/loco-keep-s0 runs/loco-keep-s1 [--json OUT.json] [--plot OUT.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trainer.config import load_config
from trainer.loco import trained_split
from trainer.metrics import score
from trainer.plots import safe_name
from trainer.prosody import fit_prosody
from trainer.train import prepare

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
ALONE = "prosody alone"  # the row of the prosody classifier's own 4-class UA


def loco_runs_parser(description: str) -> argparse.ArgumentParser:
    """The options of a script that rescores LOCO runs' saved held-out logits: the runs, the recipe, the
    manifest and recipe overrides (also ``benchmarks/prosody_fit_sets.py``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="+", type=Path, help="LOCO run folders (fold-*/test_logits.npy, config.yaml)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main() -> None:
    parser = loco_runs_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=",".join(map(str, WEIGHTS)))
    parser.add_argument("--json", type=Path, default=None, help="also write {run: {weight: {corpus: UA}}}")
    parser.add_argument("--plot", type=Path, default=None, help="also draw mean UA against the weight (PNG)")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    config = load_config(args.config, [*args.overrides, "cache=false"])
    data = prepare(config, args.manifest)
    functionals = data.prosody_functionals(config)  # what the classifier scores: the clips as given
    fitted_on = data.prosody_functionals(config, config.prosody.fit_trim_db)  # what it is fitted on
    clips = data.manifest.clips
    corpora = sorted({clips[i].corpus for i in data.usable})
    names = [str(r) for r in args.runs] + (["merged"] if len(args.runs) > 1 else [])
    table: dict[str, dict[float | str, dict[str, float]]] = {n: {w: {} for w in weights} for n in names}
    for corpus in corpora:
        test = [i for i in data.usable if clips[i].corpus == corpus]
        emotions = [clips[i].emotion for i in test]
        fused_parts = []
        for run in args.runs:
            fold = run / f"fold-{safe_name(corpus)}"
            train_idx = trained_split(fold, data)
            targets, balance = data.training_targets(config, train_idx)
            head = fit_prosody(fitted_on[train_idx], targets, balance, config.prosody.c, 1.0)
            fused_parts.append((np.load(fold / "test_logits.npy"), head.log_probs(functionals[test])))
        parts = {str(r): p for r, p in zip(args.runs, fused_parts, strict=True)}
        if len(args.runs) > 1:
            parts["merged"] = tuple(np.mean([p[k] for p in fused_parts], axis=0) for k in (0, 1))
        for name, (logits, log_probs) in parts.items():
            for w in weights:
                result = score(logits + w * log_probs, emotions, [corpus] * len(test), data.labels.classes, "4class")
                table[name][w][corpus] = result[corpus]["ua"]
            alone = score(log_probs, emotions, [corpus] * len(test), data.labels.classes, "4class")
            table[name].setdefault(ALONE, {})[corpus] = alone[corpus]["ua"]
        print(f"fold {corpus} done", flush=True)
    for name in names:
        print(f"\n{name}\n| weight | " + " | ".join(corpora) + " | **mean UA** |\n|---|" + "---|" * (len(corpora) + 1))
        for w in [*weights, ALONE]:
            row = table[name][w]
            cells = " | ".join(f"{row[c]:.3f}" for c in corpora)
            print(f"| {w if w == ALONE else f'{w:g}'} | {cells} | **{np.mean(list(row.values())):.3f}** |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    if args.plot:
        plot(table, weights, args.plot)


def plot(table: dict[str, dict[float | str, dict[str, float]]], weights: list[float], path: Path) -> None:
    """Mean 4-class UA over the held-out corpora against the fusion weight, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, rows in table.items():
        means = [np.mean(list(rows[w].values())) for w in weights]
        ax.plot(weights, means, marker="o", linewidth=2.5 if name == "merged" else 1.2,
                label=name if name == "merged" else Path(name).name)
    ax.set_xlabel("prosody fusion weight")
    ax.set_ylabel("LOCO mean 4-class UA (6 held-out corpora)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
