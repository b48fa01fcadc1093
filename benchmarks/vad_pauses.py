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
from pathlib import Path

import numpy as np

from edge_ser.audio import load_audio
from edge_ser.smoothing import SegmentSmootherConfig
from edge_ser.vad import VadConfig
from edge_ser.windows import WindowConfig
from trainer.stream_eval import SEG_END, SEG_START, run_stages
from trainer.tracking import load_truth

BOUNDARY_SLACK_S = 0.3
PERCENTILES = (10, 25, 50, 75, 90)


def pauses(folder: Path, vad: VadConfig) -> tuple[list[float], list[float]]:
    """(pauses between clips, pauses inside a clip) over the streams of one folder, the audio fed through the
    agent's stages as ``edge-ser-eval --streams`` feeds it."""
    between: list[float] = []
    inside: list[float] = []
    wavs = sorted(folder.glob("stream_*.wav"))
    if not wavs:
        raise FileNotFoundError(f"{folder}: no stream_*.wav (expected a folder written by trainer.streams)")
    for wav in wavs:
        boundaries = load_truth(wav.with_suffix(".json")).boundaries
        events, _, _ = run_stages(wav.stem, load_audio(wav), vad, WindowConfig())
        last_end: float | None = None
        for kind, t in events:
            if kind == SEG_END:
                last_end = t
            elif kind == SEG_START and last_end is not None:
                crosses = any(last_end - BOUNDARY_SLACK_S <= b <= t + BOUNDARY_SLACK_S for b in boundaries)
                (between if crosses else inside).append(t - last_end)
    return between, inside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="stream folders (stream_NNN.wav + .json)")
    args = parser.parse_args(argv)
    vad = VadConfig()
    cut = SegmentSmootherConfig().continue_pause_s
    head = " | ".join(f"p{p}" for p in PERCENTILES)
    print(f"| streams | pause | n | {head} | share < {cut:g} s |")
    print("|---|---|---:|" + "---:|" * len(PERCENTILES) + "---:|")
    for folder in args.folders:
        for name, values in zip(("between clips", "inside a clip"), pauses(folder, vad), strict=True):
            v = np.asarray(values)
            cells = " | ".join(f"{np.percentile(v, p):.2f}" if len(v) else "" for p in PERCENTILES)
            share = f"{(v < cut).mean():.2f}" if len(v) else ""
            print(f"| {folder.name} | {name} | {len(v)} | {cells} | {share} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
