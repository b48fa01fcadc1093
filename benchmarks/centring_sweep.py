"""How much per-clip and per-speaker centring of the encoder features moves LOCO's held-out UA.

Scores every fold of one or more LOCO runs (``trainer.loco`` folders) again, as ``trainer.loco --rescore``
does, once per centring setting of ``trainer.loco.Centring`` (trainer/speaker_norm.py):

* ``none``: each clip as it is, the zero-shot figure (for a run trained with ``normalize: speaker``: how it
  scores a speaker it has heard nothing of yet);
* ``clip, prior P s``: each clip on its own mean, shrunk toward the training mean with P seconds (zero-shot);
* ``speaker``: each held-out speaker on their mean over all their clips (speaker-adaptive, transductive);
* ``stream[-grouped], prior P s``: causal, each clip on the mean of the speaker's earlier clips, replayed in
  a seeded order (``grouped``: each emotion's clips in a row, the worst case for a running mean).

Prints one markdown table per run (4-class UA per held-out corpus, and the mean) and, for the stream
settings, the mean UA by how much of the speaker the stream had heard before the clip, centred and on the
same clips uncentred (the bins hold different clips: compare within a bin; in brackets: over how many
corpora, a corpus with no clip in a bin does not count there). ``--plot`` draws the gain per bin.

    python benchmarks/centring_sweep.py --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv \\
        --set label_mode=hard --set views=1 --set threads=1 runs/loco-v2-s0
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trainer.config import load_config
from trainer.loco import Centring, rescore_fold
from trainer.train import prepare

SETTINGS: list[tuple[str, Centring]] = [
    ("none", Centring("none")),
    ("clip, prior 0 s", Centring("clip", prior_s=0.0)),
    ("clip, prior 2 s", Centring("clip", prior_s=2.0)),
    ("clip, prior 10 s", Centring("clip", prior_s=10.0)),
    ("speaker (all the speaker's clips)", Centring("speaker")),
    ("stream, prior 0 s", Centring("stream", prior_s=0.0)),
    ("stream, prior 10 s", Centring("stream", prior_s=10.0)),
    ("stream, prior 30 s", Centring("stream", prior_s=30.0)),
    ("stream, prior 60 s", Centring("stream", prior_s=60.0)),
    ("stream-grouped, prior 10 s", Centring("stream-grouped", prior_s=10.0)),
    ("stream-grouped, prior 30 s", Centring("stream-grouped", prior_s=30.0)),
    ("stream-grouped, prior 60 s", Centring("stream-grouped", prior_s=60.0)),
]


Curves = dict[str, dict[str, list[tuple[float, float]]]]  # {setting: {history bin: [(UA, UA uncentred)]}}


def _history_name(bounds: list[float | None]) -> str:
    low, high = bounds
    return "none" if low == 0 else f"{low:.0f}-{high:.0f} s" if high is not None else f">= {low:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="LOCO run folders (fold-<corpus>/model in each)")
    parser.add_argument("--config", default=None, help="the runs' recipe YAML")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="the runs' recipe overrides (the cache key depends on them)")
    parser.add_argument("--folds", default=None, help="comma-separated held-out corpora (default: every fold)")
    parser.add_argument("--json", type=Path, default=None, help="also write {run: {setting: {corpus: UA}}}")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also plot each run's stream "
                        "settings' UA by speaker audio heard, against no centring and whole-speaker centring")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config, args.overrides)
    data = prepare(config, args.manifest)
    results: dict[str, dict[str, dict[str, float]]] = {}
    plotted: dict[str, tuple[dict[str, dict[str, float]], Curves]] = {}
    for run in args.runs:
        corpora = sorted(f.name.removeprefix("fold-") for f in run.glob("fold-*") if (f / "model").is_dir())
        if args.folds:
            corpora = [c for c in corpora if c in args.folds.split(",")]
        if not corpora:
            raise SystemExit(f"{run}: no fold-*/model folders")
        table: dict[str, dict[str, float]] = {name: {} for name, _ in SETTINGS}
        curves: Curves = {}
        for corpus in tqdm(corpora, desc=str(run), unit="fold"):
            for name, centring in SETTINGS:
                row = rescore_fold(config, data, corpus, run / f"fold-{corpus}", False, centring)
                table[name][corpus] = float(row["4class"]["ua"])
                for entry in row.get("adaptation", []):
                    if entry["ua"] is not None:
                        curves.setdefault(name, {}).setdefault(_history_name(entry["history_s"]), []).append(
                            (float(entry["ua"]), float(entry["ua_plain"])))
        results[str(run)] = table
        plotted[str(run)] = (table, curves)
        print(f"### {run}\n\n| centring | " + " | ".join(corpora) + " | **mean UA** |\n|---|" +
              "---|" * (len(corpora) + 1))
        for name, row in table.items():
            print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in corpora) +
                  f" | **{np.mean(list(row.values())):.3f}** |")
        print("\nstream settings, by the speaker audio heard before the clip: mean 4-class UA over corpora, "
              "centred / the same clips uncentred (corpora with clips in the bin):\n")
        bins = list(dict.fromkeys(b for by_bin in curves.values() for b in by_bin))
        print("| centring | " + " | ".join(bins) + " |\n|---|" + "---|" * len(bins))
        for name, by_bin in curves.items():
            cells = [f"{np.mean([u for u, _ in by_bin[b]]):.3f} / {np.mean([p for _, p in by_bin[b]]):.3f} "
                     f"({len(by_bin[b])})" if b in by_bin else "-" for b in bins]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot_curves(plotted, args.plot)
        print(f"plot: {args.plot}")
    return 0


def plot_curves(runs: dict[str, tuple[dict[str, dict[str, float]], Curves]], path: Path) -> None:
    """One panel per run: per history bin, each stream setting's gain in UA over the same clips uncentred
    (mean over corpora), with the whole-speaker centring's gain over all clips as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 5.2), squeeze=False, sharey=True)
    for ax, (run, (table, curves)) in zip(axes[0], runs.items(), strict=True):
        bins = list(dict.fromkeys(b for by_bin in curves.values() for b in by_bin))
        for name, by_bin in curves.items():
            gains = [np.mean([u - p for u, p in by_bin[b]]) if b in by_bin else np.nan for b in bins]
            ax.plot(range(len(bins)), gains, marker="o", label=name)
        speaker = "speaker (all the speaker's clips)"
        ax.axhline(np.mean(list(table[speaker].values())) - np.mean(list(table["none"].values())), color="grey",
                   linestyle="--", label=f"{speaker}, all clips")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(bins)), bins)
        ax.set_xlabel("speaker audio heard before the clip")
        ax.set_title(run, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("4-class UA gain over the same clips uncentred")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
