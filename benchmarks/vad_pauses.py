"""The pauses the agent's VAD leaves between speech segments of shift streams, split by what they separate.

For every speech segment after the first in a stream, the pause before it (its start, pre-roll included,
minus the previous segment's end) is put in one of two groups: **between clips** when a true clip boundary
lies in the pause (+-0.3 s), **inside a clip** otherwise (one utterance split by the VAD). Their
percentiles per stream folder show which pause lengths `smoothing.continue_pause_s` can treat as "the same
utterance" without merging clips.

    python benchmarks/vad_pauses.py runs/sweep-cont-s1/streams/*      # one folder of stream_*.wav/.json each
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_ser.types import SAMPLE_RATE, AudioBlock, SpeechBoundary
from edge_ser.vad import Segmenter, VadConfig

BOUNDARY_SLACK_S = 0.3
BLOCK_S = 0.1
PERCENTILES = (10, 25, 50, 75, 90)


def segment_marks(wav: Path, config: VadConfig) -> list[tuple[str, float]]:
    """The VAD's start/end marks for one stream, fed in 0.1 s blocks as the agent feeds it."""
    audio, sr = sf.read(wav, dtype="float32")
    if sr != SAMPLE_RATE:
        raise ValueError(f"{wav}: expected {SAMPLE_RATE} Hz audio, got {sr} Hz")
    segmenter = Segmenter(wav.stem, config)
    step = int(BLOCK_S * SAMPLE_RATE)
    items = []
    for i in range(0, len(audio), step):
        items += segmenter.push(AudioBlock(wav.stem, i / SAMPLE_RATE, audio[i : i + step]))
    items += segmenter.flush()
    return [(x.kind, x.t) for x in items if isinstance(x, SpeechBoundary)]


def pauses(folder: Path, config: VadConfig) -> tuple[list[float], list[float]]:
    """(pauses between clips, pauses inside a clip) over the streams of one folder."""
    between: list[float] = []
    inside: list[float] = []
    wavs = sorted(folder.glob("stream_*.wav"))
    if not wavs:
        raise FileNotFoundError(f"{folder}: no stream_*.wav (expected a folder written by trainer.streams)")
    for wav in wavs:
        truth = json.loads(wav.with_suffix(".json").read_text())
        boundaries = [float(iv["start"]) for iv in truth["intervals"][1:]]
        last_end: float | None = None
        for kind, t in segment_marks(wav, config):
            if kind == "end":
                last_end = t
            elif last_end is not None:
                crosses = any(last_end - BOUNDARY_SLACK_S <= b <= t + BOUNDARY_SLACK_S for b in boundaries)
                (between if crosses else inside).append(t - last_end)
    return between, inside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="stream folders (stream_NNN.wav + .json)")
    args = parser.parse_args(argv)
    config = VadConfig()
    head = " | ".join(f"p{p}" for p in PERCENTILES)
    print(f"| streams | pause | n | {head} | share < 0.15 s |")
    print("|---|---|---:|" + "---:|" * len(PERCENTILES) + "---:|")
    for folder in args.folders:
        for name, values in zip(("between clips", "inside a clip"), pauses(folder, config), strict=True):
            v = np.asarray(values)
            cells = " | ".join(f"{np.percentile(v, p):.2f}" for p in PERCENTILES) if len(v) else " | ".join(
                "" for _ in PERCENTILES)
            share = f"{(v < 0.15).mean():.2f}" if len(v) else ""
            print(f"| {folder.name} | {name} | {len(v)} | {cells} | {share} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
