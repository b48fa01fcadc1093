"""Zero-shot centring in a nuisance subspace: does removing a clip's own offset along the directions in which
the *training* speakers differ (and their emotions do not) help a held-out corpus?

Each clip centred on its own mean removes the emotion with the speaker (docs/ablations.md, "Stream
adaptation": 0.337 mean UA). This restricts the centring to k directions learned from the training corpora
of each LOCO fold (labels of training clips only; nothing of the held-out corpus but the clip itself, so the
figure stays zero-shot):

* ``pca``: the top k principal directions of the training speakers' means;
* ``lda``: the top k directions of the generalised eigenproblem between-speaker scatter against
  within-speaker scatter of emotion means (speaker-heavy, emotion-light directions).

The head reads ``features - gamma * U U^T (m_clip - m_ref)`` (``U``: the k directions, orthonormalised;
``m``: means of standardised encoder features, trainer/speaker_norm.py). Prints one markdown row per
setting: 4-class UA per held-out corpus and the mean; k = 0 is the fold models' own zero-shot figure.

    python benchmarks/nuisance_subspace.py --config configs/train-cpu.yaml \\
        --manifest ../shared/data/manifest.csv --set label_mode=hard --set views=1 runs/loco-v2-s0
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trainer.config import load_config
from trainer.data import Clip
from trainer.evaluate import build_model_from_checkpoint, predict_cached
from trainer.metrics import score
from trainer.speaker_norm import speaker_table
from trainer.train import prepare

KS = (1, 2, 4, 8, 16, 32, 64)


def nuisance_directions(clips: Sequence[Clip], rows: Sequence[int], means: np.ndarray) -> dict[str, np.ndarray]:
    """{"pca": (D, D), "lda": (D, D)}: candidate directions as rows, strongest first, from the clips ``rows``."""
    row_of, speaker_means = speaker_table(clips, rows, means[rows])
    by_speaker_emotion: dict[tuple[int, str], list[int]] = {}
    for row, i in enumerate(rows):
        by_speaker_emotion.setdefault((int(row_of[row]), clips[i].emotion), []).append(i)
    emotion_devs = [means[members].mean(axis=0) - speaker_means[speaker]
                    for (speaker, _), members in by_speaker_emotion.items()]
    between = speaker_means - speaker_means.mean(axis=0)
    _, _, pca = np.linalg.svd(between, full_matrices=False)
    within = np.stack(emotion_devs)
    s_w = within.T @ within / len(within)
    s_w += 1e-3 * np.trace(s_w) / len(s_w) * np.eye(len(s_w))
    values, vectors = np.linalg.eigh(s_w)
    whiten = vectors / np.sqrt(values)
    _, directions = np.linalg.eigh(whiten.T @ (between.T @ between / len(between)) @ whiten)
    return {"pca": pca, "lda": (whiten @ directions[:, ::-1]).T}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a LOCO run folder (fold-<corpus>/model in it)")
    parser.add_argument("--config", default=None, help="the run's recipe YAML")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="the run's recipe overrides (the cache key depends on them)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config, args.overrides)
    data = prepare(config, args.manifest)
    if data.cache is None:
        raise SystemExit("needs the frozen-layer cache (cache: true)")
    clips, means = data.manifest.clips, data.speaker_means()
    corpora = sorted(f.name.removeprefix("fold-") for f in args.run.glob("fold-*") if (f / "model").is_dir())
    if not corpora:
        raise SystemExit(f"{args.run}: no fold-*/model folders")
    table: dict[str, dict[str, float]] = {}
    for corpus in tqdm(corpora, desc=str(args.run), unit="fold"):
        model, meta = build_model_from_checkpoint(args.run / f"fold-{corpus}" / "model", config.base_dir)
        train = [i for i in data.usable if clips[i].corpus != corpus]
        test = [i for i in data.usable if clips[i].corpus == corpus]
        reference = means[train].mean(axis=0)
        settings: list[tuple[str, np.ndarray | None]] = [("none (k = 0)", None)]
        for kind, directions in nuisance_directions(clips, train, means).items():
            for k in KS:
                basis, _ = np.linalg.qr(directions[:k].T)
                settings.append((f"{kind}, k = {k}", ((means[test] - reference) @ basis) @ basis.T))
        for name, offsets in settings:
            logits = predict_cached(model, data.cache.views[0], test, config.frozen_layers,
                                    offsets=None if offsets is None else offsets.astype(np.float32))
            scored = score(logits, [clips[i].emotion for i in test], [clips[i].corpus for i in test], meta.labels,
                           "4class", False)
            table.setdefault(name, {})[corpus] = float(scored[corpus]["ua"])
    print("| centring | " + " | ".join(corpora) + " | **mean UA** |\n|---|" + "---|" * (len(corpora) + 1))
    for name, row in table.items():
        cells = " | ".join(f"{row[c]:.3f}" for c in corpora)
        print(f"| {name} | {cells} | **{np.mean(list(row.values())):.3f}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
