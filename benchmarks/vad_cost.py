"""What the agent's VAD costs: milliseconds of one core per second of audio, for VAD settings side by side.

Every stream of the given folders (``stream_*.wav`` from ``trainer.streams``) is decoded once, then fed in
0.1 s blocks through a fresh ``edge_ser.vad.Segmenter`` per setting; the settings take turns round after
round, and the median over rounds is printed with its ratio to the first setting.

    python benchmarks/vad_cost.py runs/sweep-v2-s1/streams/nemo --set "max_unvoiced_ms=null" --set "" --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from edge_ser.audio import load_audio
from edge_ser.types import SAMPLE_RATE, AudioBlock
from edge_ser.vad import Segmenter, VadConfig
from trainer.config import apply_overrides

BLOCK = 1600


def parse_setting(text: str) -> VadConfig:
    """``"key=value,key=value"`` (values as YAML) over the defaults; ``""`` is the default."""
    return VadConfig(**apply_overrides({}, [part.strip() for part in text.split(",") if part.strip()]))


def run_once(config: VadConfig, streams: list[np.ndarray]) -> float:
    """Seconds of CPU to segment every stream once."""
    start = time.process_time()
    for index, audio in enumerate(streams):
        segmenter = Segmenter(f"s{index}", config)
        for first in range(0, audio.size, BLOCK):
            segmenter.push(AudioBlock(f"s{index}", first / SAMPLE_RATE, audio[first : first + BLOCK]))
        segmenter.flush()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of stream_*.wav")
    parser.add_argument("--set", dest="settings", action="append", default=None, metavar="K=V[,K=V]",
                        help='VAD fields over the defaults, one setting per --set ("" = the defaults)')
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default %(default)s)")
    args = parser.parse_args(argv)
    settings = args.settings or [""]
    configs = [parse_setting(s) for s in settings]
    wavs = sorted(w for folder in args.folders for w in folder.glob("stream_*.wav"))
    if not wavs:
        parser.error(f"no stream_*.wav in {', '.join(map(str, args.folders))}")
    streams = [load_audio(w) for w in wavs]
    seconds = sum(a.size for a in streams) / SAMPLE_RATE
    times: list[list[float]] = [[] for _ in configs]
    for _ in range(args.rounds):
        for k, config in enumerate(configs):
            times[k].append(run_once(config, streams))
    print(f"{len(streams)} streams, {seconds:.0f} s of audio, {args.rounds} rounds")
    print("| setting | ms CPU / s of audio (median) | ratio to the first |")
    print("|---|---|---|")
    base = statistics.median(times[0])
    for text, spent in zip(settings, times, strict=True):
        median = statistics.median(spent)
        print(f"| {text or 'defaults'} | {1000 * median / seconds:.2f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
