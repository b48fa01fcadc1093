"""What to fit the prosody classifier on: LOCO 4-class UA for several sets of training functionals.

The prosody classifier (edge_ser/prosody.py) scores a window's eGeMAPS functionals. Its training clips carry
the silences each corpus was recorded with, and the agent's windows are two-second pieces of VAD-cut speech.
For each fold of each LOCO run (the fold's own training clips, ``trainer.loco.trained_split``), this fits one
classifier per set of training functionals:

* ``clips``: the clips as given (centre 8 s; stop 30's classifier);
* ``edges cut``: the clips with their quiet edges cut (``--trim-db``, as ``prosody.fit_trim_db``);
* ``crops``: one random ``--crop-s`` piece of each edge-cut clip (seeded per clip), the length of the
  agent's windows;
* ``clips + crops`` and ``edges cut + crops``: both rows of every clip.

and scores the held-out corpus's clips as given (what ``edge-ser-eval`` and the runtime score) and with their
edges cut, alone and added to the fold's saved ``test_logits.npy`` at each of ``--weights``. Prints the mean
UA per run and for the runs merged fold by fold (logits and log-probabilities averaged, as
``trainer.ensemble`` merges models). The crops' functionals are computed here (a progress bar, two processes
with ``--workers 2``) and kept in ``--crops`` for the next run.

    python benchmarks/prosody_fit_sets.py --config configs/train-cpu.yaml --manifest ../shared/data/manifest.csv \\
        --set label_mode=hard --set views=1 runs/loco-keep-s0 runs/loco-keep-s1 [--json OUT.json]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from prosody_weight import loco_runs_parser  # a sibling script (benchmarks/ is on sys.path)
from tqdm import tqdm

from edge_ser.audio import AudioError, load_audio
from edge_ser.features import trim_quiet_edges
from edge_ser.prosody import N_FUNCTIONALS, Functionals
from edge_ser.types import SAMPLE_RATE
from trainer.config import load_config
from trainer.data import Clip, crop
from trainer.loco import trained_split
from trainer.metrics import score
from trainer.plots import safe_name
from trainer.prosody import fit_prosody
from trainer.train import prepare

FIT_SETS = {"clips": ("clips",), "edges cut": ("edges cut",), "crops": ("crops",),
            "clips + crops": ("clips", "crops"), "edges cut + crops": ("edges cut", "crops")}
SCORED_ON = ("clips", "edges cut")
_EXTRACT = Functionals()


def _crop_functionals(job: tuple[int, Path, int, float, int]) -> tuple[int, np.ndarray | None]:
    """One clip's centre ``max_samples``, its quiet edges cut, a random ``crop_samples`` piece of that (all
    of it when shorter): its functionals, or None when the clip cannot be decoded."""
    index, path, max_samples, trim_db, crop_samples = job
    try:
        audio = trim_quiet_edges(crop(load_audio(path), max_samples), trim_db)
    except (AudioError, ValueError):
        return index, None
    if len(audio) > crop_samples:
        start = int(np.random.default_rng([31, index]).integers(0, len(audio) - crop_samples + 1))
        audio = audio[start:start + crop_samples]
    return index, _EXTRACT(audio)


def crop_functionals(clips: Sequence[Clip], indices: Sequence[int], max_clip_s: float, trim_db: float, crop_s: float,
                     path: Path, workers: int) -> np.ndarray:
    """(clips, 88) functionals of one crop per clip in ``indices`` (NaN elsewhere), kept in ``path``."""
    recipe = np.array(json.dumps({"max_clip_s": max_clip_s, "trim_db": trim_db, "crop_s": crop_s, "seed": 31}))
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["recipe"]) == str(recipe) and stored["functionals"].shape == (len(clips), N_FUNCTIONALS):
                return stored["functionals"]
    values = np.full((len(clips), N_FUNCTIONALS), np.nan, dtype=np.float32)
    jobs = [(i, clips[i].path, int(max_clip_s * SAMPLE_RATE), trim_db, int(crop_s * SAMPLE_RATE)) for i in indices]
    with get_context("spawn").Pool(workers) as pool, tqdm(total=len(jobs), desc="crops", unit="clip",
                                                          mininterval=10) as bar:
        for index, row in pool.imap_unordered(_crop_functionals, jobs, chunksize=64):
            if row is not None:
                values[index] = row
            bar.update()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, functionals=values, recipe=recipe)
    return values


def main() -> None:
    parser = loco_runs_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="0.3,0.5,0.7")
    parser.add_argument("--trim-db", type=float, default=40.0)
    parser.add_argument("--crop-s", type=float, default=2.0)
    parser.add_argument("--crops", type=Path, default=Path("runs/prosody-crops.npz"),
                        help="where the crops' functionals are kept between runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write {fit set: {scored on: {weight: "
                        "{run: mean UA}}}}")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    config = load_config(args.config, [*args.overrides, "cache=false"])
    data = prepare(config, args.manifest)
    clips = data.manifest.clips
    functionals = {"clips": data.prosody_functionals(config),
                   "edges cut": data.prosody_functionals(config, args.trim_db),
                   "crops": crop_functionals(clips, data.usable, config.max_clip_s, args.trim_db, args.crop_s,
                                             args.crops, args.workers)}
    corpora = sorted({clips[i].corpus for i in data.usable})
    names = [r.name for r in args.runs] + (["merged"] if len(args.runs) > 1 else [])
    table: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
    for corpus in corpora:
        test = [i for i in data.usable if clips[i].corpus == corpus]
        emotions = [clips[i].emotion for i in test]
        parts: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        for run in args.runs:
            fold = run / f"fold-{safe_name(corpus)}"
            train_idx = trained_split(fold, data)
            targets, balance = data.training_targets(config, train_idx)
            logits = np.load(fold / "test_logits.npy")
            for fit_set, sources in FIT_SETS.items():
                x = np.concatenate([functionals[s][train_idx] for s in sources])
                head = fit_prosody(x, np.concatenate([targets] * len(sources)),
                                   np.concatenate([balance] * len(sources)), config.prosody.c, 1.0)
                for scored_on in SCORED_ON:
                    parts.setdefault((fit_set, scored_on), []).append(
                        (logits, head.log_probs(functionals[scored_on][test])))
        for (fit_set, scored_on), runs in parts.items():
            if len(runs) > 1:
                runs = [*runs, tuple(np.mean([r[k] for r in runs], axis=0) for k in (0, 1))]
            for w in ["alone", 0.0, *weights]:
                row = table.setdefault(fit_set, {}).setdefault(scored_on, {}).setdefault(str(w), {})
                for name, (logits, log_probs) in zip(names, runs, strict=True):
                    fused = log_probs if w == "alone" else logits + float(w) * log_probs
                    ua = score(fused, emotions, [corpus] * len(test), data.labels.classes, "4class")[corpus]["ua"]
                    row.setdefault(name, []).append(ua)
        print(f"fold {corpus} done", flush=True)
    means = {f: {s: {w: {n: float(np.mean(v)) for n, v in row.items()} for w, row in by_w.items()}
                 for s, by_w in by_s.items()} for f, by_s in table.items()}
    print("\n| fitted on | scored on | weight | " + " | ".join(names) + " |\n|---|---|---|" + "---|" * len(names))
    for fit_set, by_s in means.items():
        for scored_on, by_w in by_s.items():
            for w, row in by_w.items():
                print(f"| {fit_set} | {scored_on} | {w} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
    if args.json:
        args.json.write_text(json.dumps(means, indent=1) + "\n")


if __name__ == "__main__":
    main()
