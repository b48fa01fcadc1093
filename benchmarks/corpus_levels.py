"""How loud each corpus records each emotion: the level that ``FeatureParams.level_db`` would normalise away.

For a random sample of clips per corpus and 4-class emotion, the level of the clip's loud frames in dBFS
(``edge_ser.features.loud_level_db``: the 95th percentile of its 20 ms frame energies, as ``level_db``
measures it), decoded by the trainer's own reader. Printed per corpus: the median level of each emotion and
the spread between the loudest and the quietest emotion's medians. A corpus that peak-normalises its clips
shows no spread; one that keeps its takes' levels shows loudness as an emotion cue that another recording
setup does not share.

    python benchmarks/corpus_levels.py --manifest ../shared/data/manifest.csv --per-class 40
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_ser.features import loud_level_db
from trainer.data import load_manifest, read_clip

EMOTIONS = ("neutral", "happy", "sad", "angry")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="manifest CSV (EVAL.md format)")
    parser.add_argument("--per-class", type=int, default=40, help="clips sampled per corpus and emotion")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--json", default=None, help="also write the per-clip levels here")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class must be >= 1, got {args.per_class}")

    manifest = load_manifest(args.manifest)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, clip in enumerate(manifest.clips):
        if clip.emotion in EMOTIONS:
            groups[(clip.corpus, clip.emotion)].append(index)
    rng = random.Random(args.seed)
    sample = {key: rng.sample(rows, min(args.per_class, len(rows))) for key, rows in sorted(groups.items())}
    levels: dict[tuple[str, str], list[float]] = defaultdict(list)
    with tqdm(total=sum(map(len, sample.values())), desc="levels", unit="clip") as bar:
        for key, rows in sample.items():
            for index in rows:
                level = loud_level_db(read_clip(manifest.clips[index]))
                if level is not None:
                    levels[key].append(level)
                bar.update()

    corpora = sorted({corpus for corpus, _ in levels})
    print(f"loud-frame level (dBFS, median of up to {args.per_class} clips) by corpus and emotion")
    print("| corpus | " + " | ".join(EMOTIONS) + " | loudest - quietest emotion |")
    print("|---|" + "---|" * (len(EMOTIONS) + 1))
    for corpus in corpora:
        medians = [float(np.median(levels[(corpus, e)])) if levels[(corpus, e)] else float("nan") for e in EMOTIONS]
        spread = np.nanmax(medians) - np.nanmin(medians)
        print(f"| {corpus} | " + " | ".join(f"{m:.1f}" for m in medians) + f" | {spread:.1f} dB |")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{c}/{e}": v for (c, e), v in levels.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
