"""Smoother x window sweep on leave-one-corpus-out shift streams (the table in docs/temporal.md).

For each held-out corpus C that has a fold model in ``LOCO/fold-C/model`` (``python -m trainer.loco``):
build ``--n`` shift streams from C's clips (seed ``--seed``) into ``OUT/streams/C``, run them through the
agent's stages with that fold model (a model that never saw C) for every window/hop below, caching the
engine's window scores in ``OUT/cache``; then replay every smoother setting over the cached scores (no
encoder run) and score tracking (trainer.tracking). Every metric is computed per corpus, then averaged
over corpora with equal weight. Writes ``OUT/sweep.json`` and ``OUT/sweep.md`` and prints the tables.

    python benchmarks/smoother_sweep.py --manifest /work/shared/data/manifest.csv --loco runs/loco-default \\
        --out runs/smoother-sweep --n 10 --threads 1

A second run with the same options reuses the streams and the cached scores (seconds, not minutes).
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

from edge_ser.backends import Ct2EngineConfig
from edge_ser.centring import CentringConfig
from edge_ser.smoothing import parse_smoother_config
from edge_ser.vad import VadConfig
from edge_ser.windows import WindowConfig
from trainer.stream_eval import (
    TARGETS,
    LazyEngine,
    ScoreCache,
    ScoredStream,
    StreamEvalConfig,
    abstained,
    build_and_load,
    evaluate_scored,
    score_streams,
    summary,
)
from trainer.streams import StreamBuildConfig

log = logging.getLogger("smoother_sweep")

REFERENCE = "raw windows (reference)"
SETUPS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (VadConfig fields, WindowConfig fields), every field that differs between them spelled out.
    # "webrtc500 2/1" is the agent's default up to stop 9; "gated250 2/1 grow whole8" the default since stop 10
    # (since stop 13 with the VAD's max_unvoiced_ms; the preset marked "up to stop 12" without it).
    "webrtc500 2/1": ({"gate_above_floor_db": None, "min_voiced_ms": 0, "end_hangover_ms": 500,
                       "max_unvoiced_ms": None},
                      {"window_s": 2.0, "hop_s": 1.0, "grow": False, "whole_max_s": None}),
    "gated250 2/1": ({"end_hangover_ms": 250}, {"window_s": 2.0, "hop_s": 1.0, "grow": False, "whole_max_s": None}),
    "gated250 2/1 grow": ({"end_hangover_ms": 250},
                          {"window_s": 2.0, "hop_s": 1.0, "grow": True, "whole_max_s": None}),
    "gated250 2/1 grow whole8": ({"end_hangover_ms": 250},
                                 {"window_s": 2.0, "hop_s": 1.0, "grow": True, "whole_max_s": 8.0}),
    "gated250 2/1 grow whole8 unvoiced-off (default up to stop 12)": (
        {"end_hangover_ms": 250, "max_unvoiced_ms": None},
        {"window_s": 2.0, "hop_s": 1.0, "grow": True, "whole_max_s": 8.0}),
    "gated250 2/1 grow whole8 unvoiced300": ({"end_hangover_ms": 250, "max_unvoiced_ms": 300},
                                             {"window_s": 2.0, "hop_s": 1.0, "grow": True, "whole_max_s": 8.0}),
    "gated250 2/1 grow whole8 unvoiced500": ({"end_hangover_ms": 250, "max_unvoiced_ms": 500},
                                             {"window_s": 2.0, "hop_s": 1.0, "grow": True, "whole_max_s": 8.0}),
    "gated250 2/0.5 grow whole8": ({"end_hangover_ms": 250},
                                   {"window_s": 2.0, "hop_s": 0.5, "grow": True, "whole_max_s": 8.0}),
    "gated250 3/1 grow whole8": ({"end_hangover_ms": 250},
                                 {"window_s": 3.0, "hop_s": 1.0, "grow": True, "whole_max_s": 8.0}),
    "gated500 2/1 grow whole8": ({"end_hangover_ms": 500},
                                 {"window_s": 2.0, "hop_s": 1.0, "grow": True, "whole_max_s": 8.0}),
}
SMOOTHERS: dict[str, dict[str, Any]] = {
    # Reference, not a candidate: each state is the latest window's argmax, with no smoothing, dwell,
    # thresholds or hysteresis (an ema with a tiny time constant through the same decision layer).
    REFERENCE: {"type": "ema", "tau_s": 0.01, "min_dwell_s": 0.0, "min_confidence": 0.0,
                                "min_gap": 0.0, "margin": 0.0},
    "ema tau0.5 dwell1": {"type": "ema"},
    "ema tau0.5 dwell0.5": {"type": "ema", "min_dwell_s": 0.5},
    "ema tau0.5 dwell0.5 conf0 gap0": {"type": "ema", "min_dwell_s": 0.5, "min_confidence": 0.0, "min_gap": 0.0},
    "hmm st0.5 dwell0.5": {"type": "hmm"},
    "median k3 dwell0.5": {"type": "median", "k": 3, "min_dwell_s": 0.5},
    "segment": {"type": "segment"},
    "segment after0.5": {"type": "segment", "decide_after_s": 0.5},
    "segment after1.5": {"type": "segment", "decide_after_s": 1.5},
    "segment minseg0.4": {"type": "segment", "min_segment_s": 0.4},
    "segment dwell1": {"type": "segment", "min_dwell_s": 1.0},
    "segment conf0.35 gap0.1": {"type": "segment", "min_confidence": 0.35, "min_gap": 0.1},
    "segment cont0 (default up to stop 11)": {"type": "segment", "continue_pause_s": 0.0},
    "segment cont0.15": {"type": "segment", "continue_pause_s": 0.15},
    "segment cont0.25": {"type": "segment", "continue_pause_s": 0.25},
    "segment cont0.35": {"type": "segment", "continue_pause_s": 0.35},
}
DEFAULTS: dict[str, tuple[str, str]] = {
    "agent default up to stop 9": ("webrtc500 2/1", "ema tau0.5 dwell1"),
    "agent default (this version)": ("gated250 2/1 grow whole8", "segment"),
}
LABEL_SPACES = ("model", "4class")
METRICS = ("ua", "ua_final", "clip_ua", "clip_second_ua", "ua_gap", "ua_final_gap", "abstain", "precision",
           "recall", "f1", "median_delay_s", "median_onset_error_s", "spurious_per_min", "unmatched_per_min")


def fold_models(loco: Path) -> dict[str, Path]:
    """{held-out corpus: fold model folder} for the folds of a LOCO run that kept their model."""
    out = {}
    for fold in sorted(loco.glob("fold-*")):
        model = fold / "model"
        if not (model / "model.json").is_file():
            log.warning("%s has no model/model.json; fold skipped", fold)
            continue
        test = fold / "test.json"
        corpora = list(json.loads(test.read_text())["corpora"]) if test.is_file() else []
        out[corpora[0] if len(corpora) == 1 else fold.name.removeprefix("fold-")] = model
    if not out:
        raise SystemExit(f"{loco}: no fold-*/model/model.json (run python -m trainer.loco first)")
    return out


def flat(entry: dict[str, Any]) -> dict[str, float | None]:
    t = entry["tracking"]
    return {"ua": t["ua"], "ua_final": t["ua_final"], "clip_ua": entry["clip_ua"],
            "clip_second_ua": entry["clip_second_ua"], "ua_gap": entry["ua_gap"],
            "ua_final_gap": entry["ua_final_gap"], "abstain": abstained(entry["seconds"]),
            "precision": t["precision"], "recall": t["recall"], "f1": t["f1"], "median_delay_s": t["median_delay_s"],
            "median_onset_error_s": t["median_onset_error_s"], "spurious_per_min": t["spurious_per_min"],
            "unmatched_per_min": t["unmatched_per_min"]}


def mean_over(per_corpus: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in METRICS:
        values = [v[key] for v in per_corpus.values() if v[key] is not None and not np.isnan(v[key])]
        out[key] = float(np.mean(values)) if values else None
    return out


def targets_met(mean: dict[str, float | None]) -> int:
    met = 0
    for key, (op, bound) in TARGETS.items():
        value = mean.get(key)
        met += value is not None and (value >= bound if op == ">=" else value <= bound)
    return met


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]], label_space: str, limit: int | None = None) -> str:
    chosen = sorted((r for r in rows if r["label_space"] == label_space), key=rank)
    lines = ["| VAD, window/hop | smoother | UA/s live | UA/s utt | UA/s clips | clip UA | utt gap | abstain | P | R | "
             "F1 | delay s | spur/min | unmatched/min | met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in chosen[:limit]:
        m = r["mean"]
        lines.append(f"| {r['setup']} | {r['smoother']} | {_f(m['ua'])} | {_f(m['ua_final'])} | "
                     f"{_f(m['clip_second_ua'])} | {_f(m['clip_ua'])} | {_f(m['ua_final_gap'])} | "
                     f"{_f(m['abstain'], 2)} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} | "
                     f"{_f(m['median_delay_s'], 2)} | {_f(m['spurious_per_min'], 2)} | "
                     f"{_f(m['unmatched_per_min'], 2)} | {r['targets_met']}/4 |")
    return "\n".join(lines)


def rank(row: dict[str, Any]) -> tuple[float, ...]:
    """Most targets met first, then change-point F1, then per-second UA."""
    m = row["mean"]
    return (-row["targets_met"], -(m["f1"] or 0.0), -(m["ua"] or 0.0))


def per_corpus_table(row: dict[str, Any]) -> str:
    lines = ["| held-out corpus | UA/s live | UA/s utt | UA/s clips | clip UA | abstain | P | R | F1 | delay s | "
             "spur/min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for corpus, m in row["per_corpus"].items():
        lines.append(f"| {corpus} | {_f(m['ua'])} | {_f(m['ua_final'])} | {_f(m['clip_second_ua'])} | "
                     f"{_f(m['clip_ua'])} | {_f(m['abstain'], 2)} | {_f(m['precision'])} | {_f(m['recall'])} | "
                     f"{_f(m['f1'])} | {_f(m['median_delay_s'], 2)} | {_f(m['spurious_per_min'], 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="manifest CSV the LOCO run used")
    parser.add_argument("--loco", required=True, help="LOCO run folder with fold-<corpus>/model/")
    parser.add_argument("--out", required=True, help="output folder (streams, cache, sweep.json, sweep.md)")
    parser.add_argument("--n", type=int, default=10, help="streams per held-out corpus (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="stream seed (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 threads (default %(default)s)")
    parser.add_argument("--folds", default=None, help="comma-separated corpora (default: every fold)")
    parser.add_argument("--setups", default=None, metavar="NAME;NAME",
                        help="';'-separated names of SETUPS (VAD + windows) to run (default: all)")
    parser.add_argument("--smoothers", default=None, metavar="NAME;NAME",
                        help="';'-separated names of SMOOTHERS to replay (default: all)")
    parser.add_argument("--top", type=int, default=None, help="rows per table in sweep.md (default: all)")
    parser.add_argument("--no-centring", action="store_true", help="score windows without stream adaptation "
                        "(edge_ser.centring); with it (the agent's default) a fold model needs its speaker_norm "
                        "reference: python -m trainer.speaker_norm --model LOCO/fold-C/model ...")
    parser.add_argument("--prosody", action="store_true", help="add a fold model's prosody term to each window "
                        "(the agent's model.prosody: true; off by default, as in the agent)")
    parser.add_argument("--stats", action="store_true", help="add a fold model's window-statistics term to each "
                        "window (the agent's model.stats: true; off by default, as in the agent)")
    parser.add_argument("--prior-s", type=float, default=None, help="stream adaptation's prior_s (default: the "
                        "agent's)")
    parser.add_argument("--model", default=None,
                        help="score every corpus with this one model instead of its fold model (an in-domain "
                             "reference when the model saw those corpora; not a LOCO result)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = shlex.join(["python", "benchmarks/smoother_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out)
    folds = fold_models(Path(args.loco))
    if args.folds:
        folds = {c: m for c, m in folds.items() if c in args.folds.split(",")}
    if args.model:
        folds = dict.fromkeys(folds, Path(args.model))
    setups = SETUPS if not args.setups else {name: SETUPS[name] for name in args.setups.split(";")}
    smoothers = SMOOTHERS if not args.smoothers else {name: SMOOTHERS[name] for name in args.smoothers.split(";")}
    engine_config = Ct2EngineConfig(intra_threads=args.threads)
    scored: dict[str, dict[str, list[ScoredStream]]] = {name: {} for name in setups}
    engine_windows = 0
    for corpus, model in folds.items():
        streams = build_and_load(args.manifest, out / "streams" / corpus,
                                 StreamBuildConfig(n=args.n, seed=args.seed, corpora=(corpus,)))
        engine = LazyEngine(model, engine_config, prosody=args.prosody, stats=args.stats)
        if not args.no_centring and engine.centring_reference is None:
            log.warning("%s: no speaker_norm reference: scored without stream adaptation", model)
        cache = ScoreCache(out / "cache" / corpus)
        for name, (vad, windows) in setups.items():
            config = StreamEvalConfig(engine=engine_config, vad=VadConfig(**vad), windows=WindowConfig(**windows),
                                      prosody=args.prosody, stats=args.stats,
                                      centring=CentringConfig(enabled=not args.no_centring,
                                                              **({} if args.prior_s is None else
                                                                 {"prior_s": args.prior_s})))
            scored[name][corpus] = score_streams(streams, engine, config, cache)
        engine_windows += engine.windows
        log.info("%s: fold model %s, %d streams, %d windows/clips run by the engine", corpus, model, len(streams),
                 engine.windows)
    rows = []
    for setup, by_corpus in scored.items():
        for name, settings in smoothers.items():
            smoothing = parse_smoother_config(settings)
            for label_space in LABEL_SPACES:
                per_corpus = {}
                for corpus, items in by_corpus.items():
                    replays, results = evaluate_scored(items, smoothing, label_space)
                    per_corpus[corpus] = flat(summary(results, items, replays))
                mean = mean_over(per_corpus)
                rows.append({"setup": setup, "vad": setups[setup][0], "windows": setups[setup][1],
                             "smoother": name, "settings": settings, "label_space": label_space,
                             "per_corpus": per_corpus, "mean": mean, "targets_met": targets_met(mean)})
    best = {space: min((r for r in rows if r["label_space"] == space and r["smoother"] != REFERENCE), key=rank)
            for space in LABEL_SPACES if any(r["smoother"] != REFERENCE for r in rows)}
    result = {"command": command, "folds": {c: str(m) for c, m in folds.items()}, "n_per_corpus": args.n,
              "seed": args.seed, "targets": {k: f"{op} {b:g}" for k, (op, b) in TARGETS.items()},
              "engine_windows_run": engine_windows, "rows": rows, "best": best}
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    parts = [f"`{command}`", ""]
    defaults = [(name, r) for name, (setup, smoother) in DEFAULTS.items() for r in rows
                if r["setup"] == setup and r["smoother"] == smoother]
    if defaults:
        parts += ["## the agent's defaults (both label spaces)", "",
                  "| default | label space | " + table(rows, "model", 0).split("\n")[0].lstrip("| "),
                  "|---|---|" + "---|" * 14]
        for name, r in defaults:
            parts.append(f"| {name} | {r['label_space']} " + table([{**r, "label_space": "x"}], "x").split("\n")[2])
        for name, r in defaults:
            parts += ["", f"{name} ({r['setup']}, {r['smoother']}), label space {r['label_space']}, per corpus:", "",
                      per_corpus_table(r)]
        parts.append("")
    for space, b in best.items():
        parts += [f"## label space: {space} (mean over {len(folds)} held-out corpora, best first)", "",
                  table(rows, space, args.top), "",
                  f"Best ({space}): {b['setup']}, {b['smoother']}, per corpus:", "",
                  per_corpus_table(b), ""]
    text = "\n".join(parts)
    (out / "sweep.md").write_text(text)
    print(text)
    log.info("engine windows/clips run this time: %d -> %s", engine_windows, out / "sweep.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
