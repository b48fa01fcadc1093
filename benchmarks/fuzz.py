"""Fuzz run over everything that reads untrusted bytes: audio decoders, the network handshake, the G.711 /
PCM codecs, the config loader and the checkpoint loader (tests/test_fuzz.py holds the property tests).

Inputs (seeded): random bytes; real files (a corpus clip as Opus / WAV / FLAC, the shipped model, a config
from configs/) truncated, bit-flipped, or with header fields overwritten by huge values; well-formed
documents with fields replaced by values of the wrong type. An input is *handled* when the target returns a
well-formed result or raises its documented error; anything else is a crash and is printed. The script also
prints the process's RSS before and after (nothing may grow without bound).

    python benchmarks/fuzz.py --iterations 2000
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from edge_ser.audio import AudioError, describe_file, load_audio
from edge_ser.checkpoint import CheckpointError, load_checkpoint, sha256_bytes
from edge_ser.config import ConfigError, load_config
from edge_ser.memory import rss_mb
from edge_ser.sources.codecs import decode_alaw, decode_mulaw, decode_s16le
from edge_ser.sources.network import HandshakeError, parse_handshake

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "emodb" / "wav" / "08a01Wa.opus"
HUGE = [b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\x00\x00\x00\x80", b"\xff\xff"]
ODD_VALUES: list[object] = [None, True, -1, 0, 2**63, 1e308, float("nan"), "", "x" * 300, [], {}, [1, "a"],
                            {"a": {"b": [None]}}, "../../etc/passwd", "a/b#+", "\x00"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["truncate", "flip", "huge", "insert", "delete"])
        if not out:
            break
        at = rng.randrange(len(out)) if rng.random() < 0.5 else rng.randrange(min(len(out), 256))
        if op == "truncate":
            del out[at:]
        elif op == "flip":
            out[at] ^= 1 << rng.randrange(8)
        elif op == "huge":
            value = rng.choice(HUGE)
            out[at:at + len(value)] = value
        elif op == "insert":
            out[at:at] = rng.randbytes(rng.randint(1, 64))
        else:
            del out[at:at + rng.randint(1, 64)]
    return bytes(out)


def random_input(seeds: list[bytes], rng: random.Random) -> bytes:
    if rng.random() < 0.25 or not seeds:
        return rng.randbytes(rng.randint(0, 4096))
    return mutate(rng.choice(seeds), rng)


def retype(doc: dict, rng: random.Random) -> dict:
    """``doc`` with one field (maybe nested one level) replaced by a value of another type."""
    doc = json.loads(json.dumps(doc))
    key = rng.choice(list(doc))
    if isinstance(doc[key], dict) and doc[key] and rng.random() < 0.5:
        doc[key][rng.choice(list(doc[key]))] = rng.choice(ODD_VALUES)
    elif isinstance(doc[key], list) and doc[key] and isinstance(doc[key][0], dict) and rng.random() < 0.5:
        doc[key][0][rng.choice(list(doc[key][0]))] = rng.choice(ODD_VALUES)
    else:
        doc[key] = rng.choice(ODD_VALUES)
    return doc


class Target:
    def __init__(self, name: str, feed: Callable[[random.Random], None], handled: tuple[type[BaseException], ...]):
        self.name, self.feed, self.handled = name, feed, handled
        self.tried = self.ok = self.refused = self.crashed = 0
        self.crashes: list[str] = []

    def run(self, rng: random.Random) -> None:
        self.tried += 1
        try:
            self.feed(rng)
        except self.handled:
            self.refused += 1
        except Exception:  # a crash: the finding this script exists for
            self.crashed += 1
            if len(self.crashes) < 5:
                self.crashes.append(traceback.format_exc(limit=3))
        else:
            self.ok += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the decoders' warnings (clipping, ...) about damaged inputs are expected
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="edge-ser-fuzz-"))
    audio_seeds = []
    if CLIP.is_file():
        audio_seeds.append(CLIP.read_bytes())
        samples = load_audio(CLIP)
        for fmt in ("WAV", "FLAC"):
            buffer = io.BytesIO()
            sf.write(buffer, samples, 16_000, format=fmt, subtype="PCM_16")
            audio_seeds.append(buffer.getvalue())
    model_meta = json.loads((ROOT / "models" / "default" / "model.json").read_text())
    weights = (ROOT / "models" / "default" / "model.safetensors").read_bytes()
    config_docs = [json.loads(json.dumps(yaml.safe_load(p.read_text())))
                   for p in sorted((ROOT / "configs").glob("*.yaml")) if p.name not in ("labels.yaml",)
                   and not p.name.startswith("train")]
    model_dir = tmp / "model"
    shutil.copytree(ROOT / "models" / "default", model_dir)

    def audio(rng: random.Random) -> None:
        path = tmp / f"input{rng.choice(['.wav', '.flac', '.opus', '.ogg'])}"
        path.write_bytes(random_input(audio_seeds, rng))
        describe_file(path)
        out = load_audio(path, max_seconds=60.0)
        if out.dtype != np.float32 or out.ndim != 1 or not np.all(np.isfinite(out)):
            raise AssertionError(f"load_audio returned {out.dtype} {out.shape} with non-finite values")

    def handshake(rng: random.Random) -> None:
        seed = json.dumps({"stream_id": "call-1", "encoding": "mulaw", "sample_rate": 8000}).encode()
        line = random_input([seed], rng) if rng.random() < 0.5 else json.dumps(
            retype({"stream_id": "c", "encoding": "alaw", "sample_rate": 8000}, rng)).encode()
        parse_handshake(line)

    def codecs(rng: random.Random) -> None:
        data = rng.randbytes(rng.randint(0, 4096))
        for decode in (decode_mulaw, decode_alaw):
            if decode(data).size != len(data):
                raise AssertionError("G.711 decode changed the sample count")
        if len(data) % 2 == 0:
            decode_s16le(data)

    def config(rng: random.Random) -> None:
        path = tmp / "agent.yaml"
        if rng.random() < 0.3:
            path.write_bytes(random_input([json.dumps(d).encode() for d in config_docs], rng))
        else:
            path.write_text(json.dumps(retype(rng.choice(config_docs), rng)))
        load_config(path)

    def checkpoint(rng: random.Random) -> None:
        if rng.random() < 0.5:
            (model_dir / "model.json").write_text(json.dumps(retype(model_meta, rng)))
            (model_dir / "model.safetensors").write_bytes(weights)
        else:
            damaged = mutate(weights, rng)
            (model_dir / "model.safetensors").write_bytes(damaged)
            (model_dir / "model.json").write_text(json.dumps({**model_meta,
                                                              "weights_sha256": sha256_bytes(model_dir /
                                                                                             "model.safetensors")}))
        load_checkpoint(model_dir)

    targets = [Target("audio decoders", audio, (AudioError,)), Target("network handshake", handshake,
                                                                      (HandshakeError,)),
               Target("G.711 / PCM codecs", codecs, (ValueError,)), Target("config loader", config, (ConfigError,)),
               Target("checkpoint loader", checkpoint, (CheckpointError,))]
    print(f"{args.iterations} inputs per target, seed {args.seed}")
    print("| target | tried | accepted | refused with its error | crashed | seconds | RSS after (MB) |")
    print("|---|---|---|---|---|---|---|")
    rss_start = rss_mb()
    for target in targets:
        began = time.perf_counter()
        for _ in range(args.iterations):
            target.run(rng)
        print(f"| {target.name} | {target.tried} | {target.ok} | {target.refused} | {target.crashed} | "
              f"{time.perf_counter() - began:.1f} | {rss_mb():.0f} |", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tried = sum(t.tried for t in targets)
    crashed = sum(t.crashed for t in targets)
    print(f"total: {tried} inputs, {tried - crashed} handled, {crashed} crashed; RSS {rss_start:.0f} -> "
          f"{rss_mb():.0f} MB")
    for target in targets:
        for crash in target.crashes:
            print(f"--- crash in {target.name}:\n{crash}")
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
