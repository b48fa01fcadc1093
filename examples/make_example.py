"""Rebuild ``examples/emodb_shifts.opus`` + ``.json``: one EmoDB speaker going neutral -> angry -> sad ->
happy (3 clips of each, 0.3 s pauses inside an emotion, 0.8 s of quiet noise between emotions).

EmoDB is republished as CC0 1.0 by audEERING (see NOTICE). Run from the repository root:
    python examples/make_example.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SPEAKER = "emodb_08"
ORDER = ("neutral", "angry", "sad", "happy")
PER_LABEL = 3
SR = 16_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder with manifest.csv")
    parser.add_argument("--out", default="examples/emodb_shifts", help="output path without extension")
    args = parser.parse_args()
    data = Path(args.data)
    rows = [r for r in csv.DictReader((data / "manifest.csv").open()) if r["speaker"] == SPEAKER]
    rng = np.random.default_rng(8)
    pieces: list[np.ndarray] = []
    intervals = []
    t = 0.0
    for label in ORDER:
        clips = sorted(r["path"] for r in rows if r["emotion"] == label)[:PER_LABEL]
        start = t
        for i, rel in enumerate(clips):
            audio, sr = sf.read(data / rel, dtype="float32")
            assert sr == SR, (rel, sr)
            pause = 0.8 if i == 0 and pieces else 0.3
            pieces.append((rng.standard_normal(int(pause * SR)) * 10 ** (-50 / 20)).astype(np.float32))
            t += pause
            if i == 0:
                start = t
            pieces.append(audio)
            t += len(audio) / SR
        intervals.append({"start": round(start, 3), "end": round(t, 3), "label": label, "sources": clips})
    signal = np.concatenate(pieces)
    out = Path(args.out)
    sf.write(out.with_suffix(".opus"), signal, SR, format="OGG", subtype="OPUS")
    truth = {"audio": out.with_suffix(".opus").name, "sample_rate": SR, "speaker": SPEAKER,
             "intervals": intervals, "boundaries": [i["start"] for i in intervals[1:]],
             "license": "EmoDB, CC0 1.0 (audEERING republication); see NOTICE"}
    out.with_suffix(".json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"{out.with_suffix('.opus')}: {len(signal) / SR:.1f} s")


if __name__ == "__main__":
    main()
