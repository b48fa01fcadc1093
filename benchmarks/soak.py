"""Soak: hours of real speech replayed fast through the real agent and a real mosquitto; memory and latency
at the start and at the end.

The real CLI (`edge-ser run`, CTranslate2 int8) serves --streams looped replays of one long file made of
real corpus clips (../shared/data, several languages), each started at a different point and paced at
--speed times real time. The agent's RSS is sampled every --sample-s seconds; a subscriber timestamps every
state message, and latency = arrival - (stream start + window_end / speed), in wall seconds. The script
prints the audio hours served, the RSS growth from the end of the warm-up to the end (target < 5 %), the
latency p50/p99 in the first and the last sampling periods, the agent's own counters, and writes a PNG.

    python benchmarks/soak.py --streams 8 --speed 4 --minutes 12 --plot docs/img/soak.png
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from loopback import LoopbackBroker

from edge_ser.memory import MemoryConfig, rss_mb

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def build_speech(path: Path, seconds: float) -> float:
    """Clips from every corpus in turn (manifest order within each), 0.3 s apart, until ``seconds``."""
    from edge_ser.audio import load_audio

    with open(DATA / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_corpus: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_corpus.setdefault(row["corpus"], []).append(row)
    queues = [iter(v) for v in by_corpus.values()]
    pieces, total = [], 0.0
    while total < seconds and queues:
        for queue in list(queues):
            row = next(queue, None)
            if row is None:
                queues.remove(queue)
                continue
            audio = load_audio(DATA / row["path"])
            pieces += [np.zeros(4800, np.float32), audio]
            total += 0.3 + audio.size / 16_000
    sf.write(path, np.concatenate(pieces), 16_000, format="FLAC")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8, help="concurrent replayed streams")
    parser.add_argument("--speed", type=float, default=4.0, help="replay pace, times real time")
    parser.add_argument("--minutes", type=float, default=12.0, help="wall-clock minutes to run")
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-samples", type=int, default=2, help="RSS samples counted as warm-up")
    parser.add_argument("--speech-minutes", type=float, default=10.0, help="length of the looped speech file")
    parser.add_argument("--plot", type=Path, help="write RSS and latency over time to this PNG")
    parser.add_argument("--allocator-defaults", action="store_true",
                        help="run the agent with glibc's allocator defaults (every memory.* setting off): the "
                        "control for the agent's memory settings")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None or not (DATA / "manifest.csv").is_file():
        print("needs mosquitto (apt-get install mosquitto) and ../shared/data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        speech = tmp / "speech.flac"
        speech_s = build_speech(speech, args.speech_minutes * 60)
        topics = [f"soak/+/+/{kind}" for kind in ("state", "status", "event")] + ["soak/+/stats"]
        with LoopbackBroker(tmp, topics) as broker:
            config = {
                "device_id": "soak",
                "sources": [{"type": "file", "id": f"s{i}", "path": str(speech), "realtime": True, "speed": args.speed,
                             "loop": True, "start_s": round(i * speech_s / args.streams, 2)}
                            for i in range(args.streams)],
                "publisher": {"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "prefix": "soak",
                              "spool": {"path": str(tmp / "spool.sqlite3")}},
                "stats": {"interval_s": args.sample_s},
            }
            if args.allocator_defaults:
                config["memory"] = dict.fromkeys(MemoryConfig.model_fields)
            (tmp / "agent.yaml").write_text(yaml.safe_dump(config))
            agent = subprocess.Popen([sys.executable, "-m", "edge_ser", "--log-level", "WARNING", "run", "--config",
                                      str(tmp / "agent.yaml")], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=(tmp / "agent.log").open("wb"))
            start = time.time()
            samples: list[tuple[float, float]] = []
            print(f"{args.streams} streams of a {speech_s / 60:.1f}-minute real-speech loop at x{args.speed:g} for "
                  f"{args.minutes:g} minutes (RSS every {args.sample_s:g} s)", flush=True)
            try:
                while time.time() - start < args.minutes * 60 and agent.poll() is None:
                    time.sleep(min(args.sample_s, args.minutes * 60 - (time.time() - start)))
                    if agent.poll() is None:
                        samples.append((time.time() - start, rss_mb(agent.pid)))
                        print(f"  {samples[-1][0] / 60:5.1f} min  RSS {samples[-1][1]:7.1f} MB", flush=True)
            finally:
                agent.terminate()
                agent.wait(60)
            if agent.returncode != 0:
                print((tmp / "agent.log").read_text()[-3000:], file=sys.stderr)
                return 1
    return report(args, start, samples, broker.arrivals)


def report(args: argparse.Namespace, start: float, samples: list[tuple[float, float]],
           arrivals: list[tuple[float, dict]]) -> int:
    starts: dict[tuple[str, str], float] = {}
    for _, p in arrivals:
        if p.get("type") == "stream_status" and p["status"] == "online":
            starts[(p["id"].split("-")[0], p["stream_id"])] = _epoch(p["ts"])
    lat: list[tuple[float, float]] = []  # (seconds since start, latency s)
    audio_s: dict[str, float] = {}
    for now, p in arrivals:
        if p.get("type") == "state" and p.get("window_end") is not None:
            key = (p["id"].split("-")[0], p["stream_id"])
            if key in starts:
                lat.append((now - start, now - (starts[key] + p["window_end"] / args.speed)))
            audio_s[p["stream_id"]] = max(audio_s.get(p["stream_id"], 0.0), p["t"])
    stats_arrivals = [(now, p) for now, p in arrivals if "streams" in p and "publisher" in p]
    stats = [p for _, p in stats_arrivals]
    if len(samples) <= args.warmup_samples or not lat:
        print("too short to report: raise --minutes", file=sys.stderr)
        return 1
    base = samples[args.warmup_samples - 1][1]
    end = samples[-1][1]
    growth = (end - base) / base * 100
    warm_end = samples[args.warmup_samples - 1][0]
    during_warmup = np.array([x for t, x in lat if t <= warm_end])
    first = np.array([x for t, x in lat if warm_end < t <= warm_end + args.sample_s])
    last = np.array([x for t, x in lat if t >= samples[-1][0] - args.sample_s])
    print(f"audio served: {sum(audio_s.values()) / 3600:.2f} h over {len(audio_s)} streams")
    print(f"RSS after warm-up {base:.1f} MB -> end {end:.1f} MB: growth {growth:+.2f} % (target < 5 %)")
    heap = [(now - start, p["memory"]) for now, p in stats_arrivals if p.get("memory", {}).get("heap_in_use_mb")]
    after = [m for t, m in heap if t > warm_end - args.sample_s / 2]
    if after:
        first_mem, last_mem = after[0], after[-1]
        print(f"C heap in use after warm-up {first_mem['heap_in_use_mb']:.1f} MB -> end "
              f"{last_mem['heap_in_use_mb']:.1f} MB; freed but mapped {first_mem['heap_free_mb']:.1f} -> "
              f"{last_mem['heap_free_mb']:.1f} MB (agent's stats topic)")
    periods = ((f"warm-up (first {warm_end:.0f} s)", during_warmup),
               (f"first {args.sample_s:g} s after warm-up", first), (f"last {args.sample_s:g} s", last))
    for name, values in periods:
        if values.size:
            print(f"latency {name}: p50 {np.percentile(values, 50) * 1000:.0f} ms, p99 "
                  f"{np.percentile(values, 99) * 1000:.0f} ms, max {values.max() * 1000:.0f} ms ({values.size} states)")
    if stats:
        last_stats = stats[-1]
        failed = sum(s["windows_failed"] for s in last_stats["streams"].values())
        print(f"agent counters at the end: {last_stats['windows']} windows ({failed} failed) in "
              f"{last_stats['batches']} batches (mean {last_stats['mean_batch']}), engine busy "
              f"{last_stats['engine_busy_s']:.0f} s, pending {last_stats['pending_windows']}; publisher "
              f"{json.dumps(last_stats['publisher'])}")
    if args.plot:
        plot(args.plot, samples, lat, args)
        print(f"plot: {args.plot}")
    return 0


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def plot(path: Path, samples: list[tuple[float, float]], lat: list[tuple[float, float]],
         args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    ax1.plot([t / 60 for t, _ in samples], [r for _, r in samples], marker="o")
    ax1.set_ylabel("agent RSS (MB)")
    ax1.set_title(f"soak: {args.streams} streams at x{args.speed:g}"
                  + (" (glibc allocator defaults)" if args.allocator_defaults else ""))
    t = np.array([x for x, _ in lat]) / 60
    y = np.array([v for _, v in lat]) * 1000
    ax2.plot(t, y, ",", alpha=0.4)
    edges = np.arange(0, t.max() + 1.0, 1.0)
    p99 = [np.percentile(y[(t >= a) & (t < a + 1)], 99) for a in edges if np.any((t >= a) & (t < a + 1))]
    ax2.plot(edges[: len(p99)] + 0.5, p99, "r-", label="p99 per minute")
    ax2.set_ylabel("state latency (ms)")
    ax2.set_xlabel("minutes")
    ax2.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
