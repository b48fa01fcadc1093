"""What stream adaptation (edge_ser.centring) adds to the CTranslate2 engine's time per window.

Times, side by side and alternating (median over ``--rounds``), one engine call on a batch of real 2 s
log-mel windows (the bundled example) with the shipped model: without adaptation (a model whose
``speaker_norm`` is removed: no feature mean measured, no offset), and with it (the feature mean measured
and an offset applied to every window). Prints ms per batch, the difference per window and its share.

    python benchmarks/centring_cost.py --batches 1,8 --rounds 30 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_ser.agent import prepare_process
from edge_ser.audio import load_audio
from edge_ser.backends.ct2_backend import Ct2Engine
from edge_ser.checkpoint import load_checkpoint, update_meta
from edge_ser.features import FeatureParams, log_mel
from edge_ser.types import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]


def windows(count: int, seconds: float = 2.0) -> list[np.ndarray]:
    audio = load_audio(ROOT / "examples" / "emodb_shifts.opus")
    step = int(seconds * SAMPLE_RATE)
    return [log_mel(audio[i * step:(i + 1) * step], FeatureParams()) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per setting (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 intra threads (default 1)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    args = parser.parse_args(argv)
    prepare_process()
    with tempfile.TemporaryDirectory() as tmp:
        plain_dir = Path(tmp) / "plain"
        shutil.copytree(args.model, plain_dir)
        meta, tensors = load_checkpoint(plain_dir)
        if meta.speaker_norm is None:
            raise SystemExit(f"{args.model}: no speaker_norm reference (python -m trainer.speaker_norm)")
        update_meta(plain_dir, dataclasses.replace(meta, speaker_norm=None), tensors)
        engines = {"off": Ct2Engine(plain_dir, intra_threads=args.threads, inter_threads=1),
                   "on": Ct2Engine(args.model, intra_threads=args.threads, inter_threads=1)}
        reference = engines["on"].centring_reference
        assert reference is not None
        print(f"model {meta.model_id}, ctranslate2 int8, {args.threads} thread(s), 2 s windows, "
              f"median of {args.rounds} alternating calls\n")
        print("| batch | off ms | on ms | on - off, ms per window | share |\n|---|---|---|---|---|")
        for batch in (int(b) for b in args.batches.split(",")):
            mels = windows(batch)
            offsets = [reference * 0.1] * batch
            calls = {"off": lambda m=mels: engines["off"].infer(m),
                     "on": lambda m=mels, o=offsets: engines["on"].infer(m, o)}
            for call in calls.values():
                call()  # warm-up
            times: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
            off, on = (float(np.median(times[k])) * 1000 for k in ("off", "on"))
            print(f"| {batch} | {off:.2f} | {on:.2f} | {(on - off) / batch:.3f} | {(on - off) / off:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
