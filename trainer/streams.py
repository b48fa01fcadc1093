"""Shift streams (EVAL.md, "Temporal tracking"): reproducible test audio in which the emotion changes.

A shift stream joins 4 to 8 clips of ONE speaker, consecutive clips never sharing a label (labels from a
chosen set, default neutral/happy/sad/angry), with 0.2-1.0 s of low-level noise between them (white or
pink, about -50 dBFS RMS). It is built from any manifest (EVAL.md columns) and a seed: the same manifest,
options and seed give byte-identical files; stream ``i`` does not depend on how many streams are built.

For each stream ``i`` the output folder gets ``stream_{i:03d}.wav`` (16 kHz mono PCM-16) and
``stream_{i:03d}.json``::

    {"audio": "stream_000.wav",            # relative to the JSON file's folder
     "sample_rate": 16000, "duration_s": 17.52,
     "speaker": "...", "corpus": "...", "labels": ["neutral", "happy", "sad", "angry"],
     "intervals": [{"start": 0.0, "end": 2.8, "label": "sad", "source": "<path as in the manifest>"}, ...],
     "boundaries": [3.41, ...],             # start of every clip after the first (each is a change)
     "seed": 0, "index": 0, "manifest": "<manifest path as given>"}

Noise gaps lie between intervals and carry no label. ``streams.json`` in the same folder lists the streams
and the options used.

Usage: ``python -m trainer.streams --manifest M --out DIR --n 20 --seed 0 [--corpus C] [--labels ...]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm

from edge_ser.audio import load_audio
from edge_ser.types import SAMPLE_RATE
from trainer.data import Clip, load_manifest

log = logging.getLogger(__name__)

DEFAULT_LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
_PLAN_TRIES = 20


class StreamBuildConfig(BaseModel):
    """How shift streams are drawn from a manifest."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(20, ge=1, description="Number of streams to build.")
    seed: int = Field(0, ge=0, description="Seed; the same seed and inputs give byte-identical streams.")
    labels: tuple[str, ...] = Field(
        DEFAULT_LABELS, min_length=2, description="Harmonized labels a clip may have (the 'emotion' column)."
    )
    corpora: tuple[str, ...] | None = Field(
        None, description="Only clips of these corpora (None: every corpus in the manifest)."
    )
    min_clips: int = Field(4, ge=2, description="Fewest clips in a stream.")
    max_clips: int = Field(8, ge=2, description="Most clips in a stream.")
    gap_min_s: float = Field(0.2, ge=0, description="Shortest noise gap between clips (seconds).")
    gap_max_s: float = Field(1.0, ge=0, description="Longest noise gap between clips (seconds).")
    noise_dbfs: float = Field(-50.0, le=0, description="RMS level of the gap noise in dBFS.")

    @model_validator(mode="after")
    def _check_ranges(self) -> StreamBuildConfig:
        if self.min_clips > self.max_clips:
            raise ValueError(f"min_clips ({self.min_clips}) must not exceed max_clips ({self.max_clips})")
        if self.gap_min_s > self.gap_max_s:
            raise ValueError(f"gap_min_s ({self.gap_min_s}) must not exceed gap_max_s ({self.gap_max_s})")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {list(self.labels)}")
        return self


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """What stream ``index`` is made of: clips in order, the gap after each but the last, its noise colour."""

    index: int
    speaker: str
    clips: tuple[Clip, ...]
    gaps_s: tuple[float, ...]
    noise: tuple[Literal["white", "pink"], ...]


def max_alternating(counts: Sequence[int]) -> int:
    """Longest label sequence without two equal neighbours that ``counts`` clips per label allow."""
    total, top = sum(counts), max(counts, default=0)
    rest = total - top
    return total if top <= rest + 1 else 2 * rest + 1


def eligible_speakers(clips: Sequence[Clip], config: StreamBuildConfig) -> dict[str, list[Clip]]:
    """Clips per speaker (label set and corpora applied) for speakers who can fill a ``min_clips`` stream."""
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        if clip.emotion in config.labels and (config.corpora is None or clip.corpus in config.corpora):
            by_speaker[clip.speaker].append(clip)
    out = {}
    for speaker in sorted(by_speaker):
        counts = defaultdict(int)
        for clip in by_speaker[speaker]:
            counts[clip.emotion] += 1
        if len(counts) >= 2 and max_alternating(list(counts.values())) >= config.min_clips:
            out[speaker] = by_speaker[speaker]
    return out


def _walk(clips: Sequence[Clip], n_clips: int, labels: Sequence[str], rng: np.random.Generator) -> list[Clip]:
    """A random sequence of distinct clips, no two neighbours sharing a label, at most ``n_clips`` long."""
    pool: dict[str, list[Clip]] = {label: [] for label in labels}
    for clip in clips:
        pool[clip.emotion].append(clip)
    for label in labels:
        pool[label] = [pool[label][i] for i in rng.permutation(len(pool[label]))]
    out: list[Clip] = []
    prev = None
    for _ in range(n_clips):
        options = [label for label in labels if label != prev and pool[label]]
        if not options:
            break
        prev = options[int(rng.integers(len(options)))]
        out.append(pool[prev].pop())
    return out


def plan_streams(clips: Sequence[Clip], config: StreamBuildConfig, source: str = "manifest") -> list[StreamPlan]:
    """Draw every stream's speaker, clips, gaps and noise from ``config.seed``; raise ValueError with the
    reason when the clips cannot make a stream."""
    corpora = sorted({c.corpus for c in clips})
    if config.corpora is not None:
        unknown = sorted(set(config.corpora) - set(corpora))
        if unknown:
            raise ValueError(f"{source}: corpora {unknown} are not in the manifest (it has {corpora})")
    speakers = eligible_speakers(clips, config)
    if not speakers:
        present = sorted({c.emotion for c in clips if config.corpora is None or c.corpus in config.corpora})
        raise ValueError(
            f"{source}: no speaker has clips of at least 2 of the labels {list(config.labels)} enough for a "
            f"{config.min_clips}-clip stream with no repeated neighbouring label (corpora "
            f"{list(config.corpora) if config.corpora else corpora}; labels present: {present})"
        )
    names = sorted(speakers)
    order = [names[i] for i in np.random.default_rng([config.seed, 0]).permutation(len(names))]
    if config.n > len(order):
        log.warning("%s: %d streams from %d eligible speakers: speakers are reused", source, config.n, len(order))
    plans = []
    for index in range(config.n):
        speaker = order[index % len(order)]
        rng = np.random.default_rng([config.seed, 1, index])
        n_clips = int(rng.integers(config.min_clips, config.max_clips + 1))
        chosen: list[Clip] = []
        for _ in range(_PLAN_TRIES):
            chosen = _walk(speakers[speaker], n_clips, config.labels, rng)
            if len(chosen) >= config.min_clips:
                break
        else:
            raise ValueError(f"{source}: could not draw {config.min_clips} alternating clips of {speaker!r}")
        gaps = tuple(float(rng.uniform(config.gap_min_s, config.gap_max_s)) for _ in chosen[1:])
        noise: tuple[Literal["white", "pink"], ...] = tuple(
            "pink" if rng.random() < 0.5 else "white" for _ in chosen[1:]
        )
        plans.append(StreamPlan(index, speaker, tuple(chosen), gaps, noise))
    return plans


def noise(n: int, color: Literal["white", "pink"], dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of white or pink (1/f power) noise at ``dbfs`` RMS, float32."""
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    x = rng.standard_normal(n)
    if color == "pink":
        spectrum = np.fft.rfft(x)
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = np.inf  # no DC
        x = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    rms = float(np.sqrt(np.mean(x**2)))
    target = 10.0 ** (dbfs / 20.0)
    return (x * (target / rms if rms > 0 else 0.0)).astype(np.float32)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def render_stream(
    plan: StreamPlan, config: StreamBuildConfig, root: Path
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode and join the plan's clips: (16 kHz float32 audio, ground truth without the file names)."""
    rng = np.random.default_rng([config.seed, 2, plan.index])
    pieces: list[np.ndarray] = []
    intervals: list[dict[str, Any]] = []
    boundaries: list[float] = []
    cursor = 0
    for i, clip in enumerate(plan.clips):
        if i > 0:
            gap = noise(round(plan.gaps_s[i - 1] * SAMPLE_RATE), plan.noise[i - 1], config.noise_dbfs, rng)
            pieces.append(gap)
            cursor += len(gap)
            boundaries.append(round(cursor / SAMPLE_RATE, 6))
        audio = load_audio(clip.path)
        pieces.append(audio)
        intervals.append(
            {
                "start": round(cursor / SAMPLE_RATE, 6),
                "end": round((cursor + len(audio)) / SAMPLE_RATE, 6),
                "label": clip.emotion,
                "source": _relative(clip.path, root),
            }
        )
        cursor += len(audio)
    samples = np.clip(np.concatenate(pieces), -1.0, 1.0).astype(np.float32)
    truth = {
        "sample_rate": SAMPLE_RATE,
        "duration_s": round(len(samples) / SAMPLE_RATE, 6),
        "speaker": plan.speaker,
        "corpus": plan.clips[0].corpus,
        "labels": list(config.labels),
        "intervals": intervals,
        "boundaries": boundaries,
        "seed": config.seed,
        "index": plan.index,
    }
    return samples, truth


def build_streams(
    manifest: str | Path,
    out_dir: str | Path,
    config: StreamBuildConfig,
    skip_bad: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Build ``config.n`` streams from ``manifest`` into ``out_dir``; returns the ground-truth JSON paths."""
    loaded = load_manifest(manifest, skip_bad=skip_bad)
    root = Path(manifest).resolve().parent
    plans = plan_streams(loaded.clips, config, source=str(manifest))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for plan in tqdm(plans, desc="shift streams", unit="stream", disable=not progress):
        samples, truth = render_stream(plan, config, root)
        stem = f"stream_{plan.index:03d}"
        sf.write(out / f"{stem}.wav", samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        document = {"audio": f"{stem}.wav", **truth, "manifest": str(manifest)}
        json_path = out / f"{stem}.json"
        json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        written.append(json_path)
    index = {
        "manifest": str(manifest),
        "config": config.model_dump(mode="json"),
        "streams": [p.name for p in written],
    }
    (out / "streams.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %d shift streams to %s", len(written), out)
    return written


def _parser() -> argparse.ArgumentParser:
    defaults = StreamBuildConfig()
    p = argparse.ArgumentParser(
        prog="python -m trainer.streams",
        description="Build reproducible shift streams (one speaker, changing emotions, noise gaps) with "
        "per-second ground truth from a manifest, for temporal-tracking evaluation (EVAL.md).",
    )
    p.add_argument("--manifest", required=True, help="Manifest CSV (path, corpus, speaker, emotion, ...).")
    p.add_argument("--out", required=True, help="Output folder for stream_NNN.wav/.json and streams.json.")
    p.add_argument("--n", type=int, default=defaults.n, help="Number of streams (default %(default)s).")
    p.add_argument("--seed", type=int, default=defaults.seed, help="Random seed (default %(default)s).")
    p.add_argument("--corpus", action="append", default=None,
                   help="Only clips of this corpus; repeat for several (default: every corpus).")
    p.add_argument("--labels", nargs="+", default=list(defaults.labels),
                   help="Harmonized labels the clips may have (default: %(default)s).")
    p.add_argument("--min-clips", type=int, default=defaults.min_clips,
                   help="Fewest clips per stream (default %(default)s).")
    p.add_argument("--max-clips", type=int, default=defaults.max_clips,
                   help="Most clips per stream (default %(default)s).")
    p.add_argument("--gap-min", type=float, default=defaults.gap_min_s,
                   help="Shortest noise gap between clips in seconds (default %(default)s).")
    p.add_argument("--gap-max", type=float, default=defaults.gap_max_s,
                   help="Longest noise gap between clips in seconds (default %(default)s).")
    p.add_argument("--noise-dbfs", type=float, default=defaults.noise_dbfs,
                   help="RMS level of the gap noise in dBFS (default %(default)s).")
    p.add_argument("--skip-bad", action="store_true",
                   help="Drop manifest rows that fail validation instead of stopping.")
    p.add_argument("--quiet", action="store_true", help="No progress bar, warnings only.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        config = StreamBuildConfig(
            n=args.n, seed=args.seed, labels=tuple(args.labels),
            corpora=tuple(args.corpus) if args.corpus else None,
            min_clips=args.min_clips, max_clips=args.max_clips,
            gap_min_s=args.gap_min, gap_max_s=args.gap_max, noise_dbfs=args.noise_dbfs,
        )
    except ValidationError as exc:
        log.error("invalid options:\n%s", exc)
        return 2
    try:
        paths = build_streams(args.manifest, args.out, config, skip_bad=args.skip_bad, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    print(os.path.join(args.out, "streams.json"), f"({len(paths)} streams)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
