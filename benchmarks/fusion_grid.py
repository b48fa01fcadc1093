"""The fusion weights of the prosody and window-statistics classifiers, swept together over LOCO runs that
were trained without them.

For each fold of each run, both classifiers are fitted on the fold's own training clips (its saved recipe's
seed and speaker split, ``trainer.loco.trained_split``; the loss's targets and weights; the prosody one on the
functionals after ``prosody.fit_trim_db``, the statistics one at each ``--cs`` value of ``stats.c``), and
their log-probabilities times each (prosody weight p, statistics weight q) of the grid are added to the fold's
saved ``test_logits.npy``. For each C it prints the grid of mean 4-class UA averaged over the single runs of
``--select`` (the runs a choice may look at), then, at the grid's best point and at each ``--show`` point:
every single run's mean UA, every merge of ``--merge-size`` runs (logits and log-probabilities averaged fold
by fold, as ``trainer.ensemble`` merges models) and their mean, and the runs outside ``--select`` merged.

    python benchmarks/fusion_grid.py --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv \\
        --set label_mode=hard --set views=1 RUN0 RUN1 RUN2 RUN3 RUN4 --select 2 --cs 0.3,1,3 \\
        [--json OUT.json] [--plot OUT.png]
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from prosody_weight import loco_runs_parser
from tqdm import tqdm

from trainer.config import load_config
from trainer.loco import trained_split
from trainer.metrics import score
from trainer.plots import safe_name
from trainer.prosody import fit_prosody
from trainer.train import prepare
from trainer.window_stats import fit_stats

Parts = dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]  # (run, corpus) -> logits, p, q terms


class FusedScores:
    """Mean 4-class UA over the held-out corpora of runs merged and fused at (p, q)."""

    def __init__(self, parts: Parts, truth: dict[str, list[str]], classes: list[str]) -> None:
        self.parts, self.truth, self.classes = parts, truth, classes

    def mean_ua(self, members: list[str], p: float, q: float) -> float:
        values = []
        for corpus, emotions in self.truth.items():
            logits, pros, stat = (np.mean([self.parts[(r, corpus)][k] for r in members], axis=0) for k in range(3))
            fused = logits + p * pros + q * stat
            values.append(score(fused, emotions, [corpus] * len(emotions), self.classes, "4class")[corpus]["ua"])
        return float(np.mean(values))


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    parser = loco_runs_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--cs", type=_floats, default=[3.0], help="stats.c values, comma-separated")
    parser.add_argument("--p", type=_floats, default=[0.0, 0.3, 0.5, 0.7, 1.0], help="prosody weights")
    parser.add_argument("--q", type=_floats, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7], help="statistics weights")
    parser.add_argument("--select", type=int, default=2, help="the first N runs choose the grid's best point")
    parser.add_argument("--merge-size", type=int, default=4)
    parser.add_argument("--show", default="0:0,0.7:0", help="more (p:q) points to print, comma-separated")
    parser.add_argument("--json", type=Path, default=None, help="also write every grid and point")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the selection grids as heat maps (PNG)")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    data = prepare(config, args.manifest)
    clips = data.manifest.clips
    functionals = data.prosody_functionals(config)
    fitted_on = data.prosody_functionals(config, config.prosody.fit_trim_db)
    statistics = data.window_statistics()
    corpora = sorted({clips[i].corpus for i in data.usable})
    runs = [str(r) for r in args.runs]
    shows = [tuple(float(x) for x in point.split(":")) for point in args.show.split(",") if point]
    report: dict[str, object] = {}
    grids: dict[float, np.ndarray] = {}
    for c in args.cs:
        parts: Parts = {}
        for corpus, run in tqdm(list(itertools.product(corpora, args.runs)), desc=f"fits, C {c:g}", unit="fold"):
            fold = run / f"fold-{safe_name(corpus)}"
            test = [i for i in data.usable if clips[i].corpus == corpus]
            train_idx = trained_split(fold, data)
            targets, balance = data.training_targets(config, train_idx)
            prosody = fit_prosody(fitted_on[train_idx], targets, balance, config.prosody.c, 1.0)
            stats = fit_stats(statistics[train_idx], targets, balance, c, 1.0)
            parts[(str(run), corpus)] = (np.load(fold / "test_logits.npy"), prosody.log_probs(functionals[test]),
                                         stats.log_probs(statistics[test]))
        scorer = FusedScores(parts, {corpus: [clips[i].emotion for i in data.usable if clips[i].corpus == corpus]
                                     for corpus in corpora}, data.labels.classes)
        mean_ua = scorer.mean_ua
        grid = np.array([[np.mean([mean_ua([r], p, q) for r in runs[: args.select]]) for q in args.q] for p in args.p])
        grids[c] = grid
        best = np.unravel_index(int(grid.argmax()), grid.shape)
        best_point = (args.p[best[0]], args.q[best[1]])
        print(f"\nC {c:g}: mean UA of the single runs {', '.join(Path(r).name for r in runs[: args.select])}\n"
              "| p \\ q | " + " | ".join(f"{q:g}" for q in args.q) + " |\n|---|" + "---|" * len(args.q))
        for i, p in enumerate(args.p):
            print(f"| {p:g} | " + " | ".join(f"{v:.4f}" for v in grid[i]) + " |")
        merges = [list(m) for m in itertools.combinations(runs, args.merge_size)]
        rest = runs[args.select :]
        points: dict[str, object] = {}
        for p, q in [best_point, *[s for s in shows if s != best_point]]:
            singles = {Path(r).name: mean_ua([r], p, q) for r in runs}
            merged = {"+".join(Path(r).name for r in m): mean_ua(m, p, q) for m in merges}
            others = mean_ua(rest, p, q) if len(rest) > 1 else None
            label = "best of the selection grid" if (p, q) == best_point else "shown"
            print(f"\np {p:g}, q {q:g} ({label}): single runs " + ", ".join(f"{v:.4f}" for v in singles.values())
                  + f" (mean {np.mean(list(singles.values())):.4f})")
            for name, value in merged.items():
                print(f"  merged {name}: {value:.4f}")
            if merged:
                print(f"  mean of the {len(merged)} merges of {args.merge_size}: {np.mean(list(merged.values())):.4f}")
            if others is not None:
                print(f"  the runs outside the selection merged: {others:.4f}")
            points[f"{p:g}:{q:g}"] = {"singles": singles, "merges": merged, "outside_selection": others}
        report[f"{c:g}"] = {"p": args.p, "q": args.q, "grid": grid.tolist(), "best": list(best_point),
                            "points": points}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(grids, args.p, args.q, args.plot)


def plot(grids: dict[float, np.ndarray], ps: list[float], qs: list[float], path: Path) -> None:
    """One heat map per C: the selection runs' mean UA over (prosody weight, statistics weight)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(4.6 * len(grids) + 1.2, 4.2), squeeze=False,
                             constrained_layout=True)
    low = min(g.min() for g in grids.values())
    high = max(g.max() for g in grids.values())
    for k, (ax, (c, grid)) in enumerate(zip(axes[0], grids.items(), strict=True)):
        image = ax.imshow(grid, cmap="viridis", vmin=low, vmax=high, aspect="auto", origin="lower")
        ax.set_xticks(range(len(qs)), [f"{q:g}" for q in qs])
        ax.set_yticks(range(len(ps)), [f"{p:g}" for p in ps])
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=6,
                    color="black" if value > (low + high) / 2 else "white")
        ax.set_xlabel("window-statistics weight q")
        if k == 0:
            ax.set_ylabel("prosody weight p")
        ax.set_title(f"window statistics, C = {c:g}")
    fig.colorbar(image, ax=axes[0].tolist(), label="mean 4-class UA, selection runs")
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
