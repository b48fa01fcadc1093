"""The prosody classifier's training side: every clip's eGeMAPS functionals (cached), the logistic regression
fitted on a run's training clips, and writing it into a model folder. Scoring and fusion live in
``edge_ser/prosody.py``.

``fit`` (trainer/train.py) adds it to every model it trains when ``prosody.enabled``; ``trainer.loco --rescore``
adds it to the fold models of an earlier run. For a model trained elsewhere (the shipped default):

    python -m trainer.prosody --model models/default --config configs/train-cpu.yaml \\
        --manifest ../shared/data/manifest.csv [--model-id NEW_ID]

fits it on every clip the recipe would train on (its corpus and label filters; no dev split, since the
fusion weight is fixed by the recipe) and writes it into the model folder (a new weights sha256).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_ser.audio import AudioError, load_audio
from edge_ser.features import trim_quiet_edges
from edge_ser.prosody import FEATURE_SET, N_FUNCTIONALS, Functionals, ProsodyHead
from edge_ser.types import SAMPLE_RATE
from trainer.data import Manifest, crop
from trainer.linear_probe import attach_main, fit_linear_probe

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_CHUNK = 64
_SAVE_EVERY = 1000
"""Clips between saves of the functionals cache, so an interrupted extraction resumes where it stopped."""
_EXTRACT = Functionals()  # one openSMILE extractor per process and thread, made on first use


def cache_path(manifest: Manifest, cache_dir: str | Path, max_clip_s: float, trim_db: float | None = None) -> Path:
    """Where a manifest's functionals are cached: beside the frame cache, under the same audio key
    (``trim_db`` is part of the key only when set, so the untrimmed caches keep their names)."""
    import opensmile

    recipe: dict[str, object] = {"format": CACHE_FORMAT, "feature_set": FEATURE_SET, "max_clip_s": max_clip_s,
                                 "opensmile": opensmile.__version__}
    if trim_db is not None:
        recipe["trim_db"] = trim_db
    blob = json.dumps(recipe, sort_keys=True)
    return Path(cache_dir) / manifest.audio_key() / f"prosody-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.npz"


def _clip_functionals(job: tuple[int, Path, int, float | None]) -> tuple[int, np.ndarray | None]:
    """One clip's functionals over its centre ``max_samples`` (the frame cache's clean view), its quiet edges
    cut when ``trim_db`` is set; None if it cannot be decoded."""
    index, path, max_samples, trim_db = job
    try:
        audio = crop(load_audio(path), max_samples)
    except (AudioError, ValueError):
        return index, None
    return index, _EXTRACT(audio if trim_db is None else trim_quiet_edges(audio, trim_db))


def clip_functionals(manifest: Manifest, indices: Sequence[int], cache_dir: str | Path, max_clip_s: float,
                     workers: int = 1, trim_db: float | None = None) -> np.ndarray:
    """(clips, 88) functionals of the manifest's clips (their quiet edges cut first with ``trim_db``), NaN
    rows for clips not in ``indices`` or undecodable. Computed once per manifest (``workers`` processes, a
    progress bar) and cached; an interrupted run keeps what it computed (saved every ``_SAVE_EVERY`` clips and
    on the way out) and resumes from it."""
    path = cache_path(manifest, cache_dir, max_clip_s, trim_db)
    values = np.full((len(manifest), N_FUNCTIONALS), np.nan, dtype=np.float32)
    done = np.zeros(len(manifest), dtype=bool)
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            if stored["functionals"].shape == values.shape:
                values, done = stored["functionals"], stored["done"]
    todo = [i for i in indices if not done[i]]
    if todo:
        max_samples = int(max_clip_s * SAMPLE_RATE)
        jobs = [(i, manifest.clips[i].path, max_samples, trim_db) for i in todo]
        log.info("prosody: eGeMAPS functionals of %d clips (%d workers) into %s", len(jobs), workers, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tqdm(total=len(jobs), desc="prosody", unit="clip", mininterval=10) as bar:
                if workers > 1:
                    with get_context("spawn").Pool(workers) as pool:
                        rows = pool.imap_unordered(_clip_functionals, jobs, chunksize=_CHUNK)
                        _collect(rows, values, done, path, bar)
                else:
                    _collect(map(_clip_functionals, jobs), values, done, path, bar)
        finally:
            _save(path, values, done)
    return values


def _collect(rows: Iterable[tuple[int, np.ndarray | None]], values: np.ndarray, done: np.ndarray, path: Path,
             bar: tqdm) -> None:
    for count, (index, row) in enumerate(rows, start=1):
        if row is not None:
            values[index] = row
        done[index] = True
        bar.update()
        if count % _SAVE_EVERY == 0:
            _save(path, values, done)


def _save(path: Path, values: np.ndarray, done: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, functionals=values, done=done)
    tmp.replace(path)


def fit_prosody(functionals: np.ndarray, targets: np.ndarray, weights: np.ndarray, c: float,
                fusion_weight: float, trim_db: float | None = None) -> ProsodyHead:
    """The prosody classifier of (N, 88) functionals (``fit_linear_probe``); ``trim_db``: the quiet-edge cut
    the functionals were taken after, recorded in the head's ``fit``."""
    return fit_linear_probe(ProsodyHead, functionals, targets, weights, c, fusion_weight,
                            {"c": c, "trim_db": trim_db})


def main(argv: list[str] | None = None) -> int:
    return attach_main(argv, "trainer.prosody", __doc__.split("\n\n")[0], "prosody", "add_prosody",
                       ["cache=false"])


if __name__ == "__main__":
    raise SystemExit(main())
