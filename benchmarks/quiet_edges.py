"""How much a model's clip decisions rest on the quiet audio at the clips' edges.

Every sampled clip is scored twice by the same model through the runtime's CTranslate2 engine (int8, as the
agent runs it): whole, as the clip protocol gives it, and with its leading and trailing 20 ms frames more
than ``--trim-db`` below its loudest cut (``edge_ser.features.trim_quiet_edges``: what is left looks like
what the agent's VAD hands the model). A model that decides from speech gives (nearly) the same answer both
ways; one that learned what a corpus's silences look like changes its mind. Printed per corpus: clips,
seconds cut per clip, 4-class UA whole and trimmed, and how often the 4-class decision agrees.

    python benchmarks/quiet_edges.py --model models/default --manifest ../shared/data/manifest.csv --per-corpus 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_ser.backends import Ct2EngineConfig, make_engine
from edge_ser.checkpoint import read_meta
from edge_ser.features import FeatureParams, trim_quiet_edges
from edge_ser.types import SAMPLE_RATE
from trainer.cache import prepare_mel
from trainer.data import load_manifest, read_clip
from trainer.evaluate import predict_engine
from trainer.metrics import protocol_probs, score

MAX_CLIP_S = 8.0
"""Longer clips are centre-cropped to this, as the training recipe crops them (``max_clip_s``)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder (model.json + model.safetensors)")
    parser.add_argument("--manifest", required=True, help="manifest CSV (EVAL.md format)")
    parser.add_argument("--per-corpus", type=int, default=200, help="clips sampled per corpus, 4-class labels only "
                        "(default %(default)s)")
    parser.add_argument("--trim-db", type=float, default=40.0, help="edge threshold below the loudest 20 ms "
                        "(default %(default)s)")
    parser.add_argument("--corpus", action="append", default=None, help="only this corpus (repeatable; e.g. "
                        "the held-out corpus of a LOCO fold model)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)

    manifest = load_manifest(args.manifest)
    rng = random.Random(args.seed)
    clips = []
    for corpus in sorted(args.corpus or {c.corpus for c in manifest.clips}):
        pool = [c for c in manifest.clips if c.corpus == corpus and c.emotion in ("neutral", "happy", "sad", "angry")]
        if not pool:
            parser.error(f"--corpus {corpus}: no clip of that corpus with a 4-class label in {args.manifest}")
        clips += rng.sample(pool, min(args.per_corpus, len(pool)))
    meta = read_meta(args.model)
    own = FeatureParams(**meta.features)
    engine = make_engine(Ct2EngineConfig(), Path(args.model))
    whole_params = dataclasses.replace(own, trim_db=None)
    trimmed_params = dataclasses.replace(own, trim_db=args.trim_db)
    max_samples = int(MAX_CLIP_S * SAMPLE_RATE)
    whole_mels, trimmed_mels, cut = [], [], []
    for clip in tqdm(clips, desc="decode", unit="clip", mininterval=10):  # each clip decoded once
        audio = read_clip(clip)
        whole_mels.append(prepare_mel(audio, None, None, max_samples, whole_params))
        trimmed_mels.append(prepare_mel(audio, None, None, max_samples, trimmed_params))
        cut.append((len(audio) - len(trim_quiet_edges(audio, args.trim_db))) / SAMPLE_RATE)
    whole, trimmed, cut_s = predict_engine(engine, whole_mels), predict_engine(engine, trimmed_mels), np.array(cut)
    emotions, corpora = [c.emotion for c in clips], [c.corpus for c in clips]
    ua_whole = score(whole, emotions, corpora, meta.labels)
    ua_trimmed = score(trimmed, emotions, corpora, meta.labels)
    agree = (protocol_probs(whole, meta.labels, "4class").argmax(1)
             == protocol_probs(trimmed, meta.labels, "4class").argmax(1))
    rows = []
    print(f"model {meta.model_id} (own trim_db: {own.trim_db}); edges cut at {args.trim_db:g} dB below the loudest")
    print("| corpus | clips | s cut / clip | UA whole | UA trimmed | same decision |")
    print("|---|---|---|---|---|---|")
    for corpus in sorted(ua_whole):
        mask = np.array([c == corpus for c in corpora])
        row = {"corpus": corpus, "clips": int(mask.sum()), "cut_s": float(cut_s[mask].mean()),
               "ua_whole": ua_whole[corpus]["ua"], "ua_trimmed": ua_trimmed[corpus]["ua"],
               "agreement": float(agree[mask].mean())}
        rows.append(row)
        print(f"| {corpus} | {row['clips']} | {row['cut_s']:.2f} | {row['ua_whole']:.3f} | {row['ua_trimmed']:.3f} | "
              f"{row['agreement']:.3f} |")
    print(f"| mean | {len(clips)} | {cut_s.mean():.2f} | {np.mean([r['ua_whole'] for r in rows]):.3f} | "
          f"{np.mean([r['ua_trimmed'] for r in rows]):.3f} | {agree.mean():.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), "trim_db": args.trim_db, "rows": rows},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
