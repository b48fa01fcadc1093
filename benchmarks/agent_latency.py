"""End-to-end latency and real-time capacity of the agent with the CTranslate2 int8 backend.

For N = each value of --streams, a real mosquitto is started on a free loopback port, the real CLI
(`edge-ser run`) serves N real-time file streams of continuous speech (the bundled example, looped; stream i
starts i * 28 / N seconds into it, so the streams' windows fall due at different instants, as independent
calls' do, instead of all in the same millisecond), and a
subscriber in this process records when each state message arrives. Latency of a state = arrival wall time -
(the stream's start wall time + ``window_end``), i.e. from the moment the last sample of the latest scored
window was available to the moment its message reached a subscriber through the broker; only the first
state that carries a new ``window_end`` counts, and only when the window's arrival published it (its grid
time ``t`` <= ``window_end``). States fall on a 1 s grid: a window that crosses no grid point (a growing
window, the whole-utterance window at a speech end) is reported by the next grid state, which the clock
publishes in a pause or a boundary, later by design; that wait is not processing latency. A window that
ends an utterance (tail or whole-utterance window) exists only once the VAD's hang-over (the agent's
default, 250 ms) has passed, and that wait is in its latency. The first --warmup seconds are discarded.
Capacity = the largest N whose p99 stays within one hop.

It also prints the encoder-only capacity (CTranslate2 int8, batches of 8 two-second windows, log-mel
included and excluded), so the cost of everything around the encoder is visible.

    python benchmarks/agent_latency.py --streams 1,48,64,80,96 --duration 40
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from loopback import LoopbackBroker

from edge_ser.memory import rss_mb

ROOT = Path(__file__).resolve().parents[1]


def encoder_capacity(seconds: float = 8.0) -> dict[str, float]:
    """Windows/s of the engine alone (batches of 8 two-second windows, as many callers as the engine runs
    batches in parallel), with the log-mel computed ahead and computed in the loop, as the agent does."""
    from edge_ser.agent import prepare_process
    from edge_ser.audio import load_audio
    from edge_ser.backends.ct2_backend import Ct2Engine
    from edge_ser.features import log_mel

    prepare_process()  # as the agent does
    engine = Ct2Engine(ROOT / "models" / "default", compute_type="int8")
    audio = load_audio(ROOT / "examples" / "emodb_shifts.opus")
    windows = [audio[i * 16000 : i * 16000 + 32000] for i in range(8)]
    mels = [log_mel(w) for w in windows]
    engine.infer(mels)

    def rate(with_logmel: bool) -> float:
        done = [0] * engine.concurrency
        stop = time.perf_counter() + seconds

        def caller(index: int) -> None:
            while time.perf_counter() < stop:
                engine.infer([log_mel(w) for w in windows] if with_logmel else mels)
                done[index] += len(windows)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(engine.concurrency)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(done) / (time.perf_counter() - began)

    return {"parallel_batches": engine.concurrency, "encoder_windows_per_s": rate(False),
            "with_logmel_windows_per_s": rate(True)}


def run_streams(n: int, duration: float, warmup: float, workdir: Path, whole_window: bool = True
                ) -> dict[str, float]:
    with LoopbackBroker(workdir, ["bench/+/+/state", "bench/+/+/status"]) as broker:
        config = {
            "device_id": "bench",
            **({} if whole_window else {"windows": {"whole_max_s": None}}),
            "batching": {"max_batch": 64, "max_wait_ms": 30},
            "sources": [{"type": "file", "id": f"s{i}", "path": str(ROOT / "examples" / "emodb_shifts.opus"),
                         "realtime": True, "loop": True, "start_s": round(i * 28.0 / n, 2)} for i in range(n)],
            "publisher": {"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "prefix": "bench",
                          "spool": {"path": str(workdir / f"spool-{n}.sqlite3")}},
            "stats": {"interval_s": 5},
        }
        cfg_path = workdir / f"agent-{n}.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        agent = subprocess.Popen([sys.executable, "-m", "edge_ser", "--log-level", "WARNING", "run", "--config",
                                  str(cfg_path)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        rss_peak = 0.0
        deadline = time.time() + duration + 15  # model load + warm-up
        while time.time() < deadline and agent.poll() is None:
            time.sleep(1.0)
            with contextlib.suppress(OSError, StopIteration):  # the agent may have just exited
                rss_peak = max(rss_peak, rss_mb(agent.pid))
        agent.terminate()
        try:
            _, err = agent.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, err = agent.communicate()
            err += b"\n(agent did not stop within 30 s of SIGTERM and was killed)"
        arrivals = broker.arrivals
    starts: dict[str, float] = {}
    latencies: list[float] = []
    for _, p in arrivals:
        if p["type"] == "stream_status" and p["status"] == "online":
            starts[p["stream_id"]] = datetime.fromisoformat(p["ts"].replace("Z", "+00:00")).timestamp()
    newest: dict[str, float] = {}
    for now, p in arrivals:
        measurable = p["type"] == "state" and p["window_end"] is not None and p["stream_id"] in starts
        if not measurable or p["window_end"] <= newest.get(p["stream_id"], -1.0) or p["t"] > p["window_end"] + 1e-6:
            continue  # a state the clock or a speech boundary produced, not the arrival of a window
        newest[p["stream_id"]] = p["window_end"]
        if p["window_end"] >= warmup:
            latencies.append(now - (starts[p["stream_id"]] + p["window_end"]))
    if not latencies:
        raise RuntimeError(f"no states measured for {n} streams; agent stderr:\n{err.decode()[-2000:]}")
    lat = np.array(latencies)
    return {"streams": n, "states": len(lat), "p50_ms": float(np.percentile(lat, 50) * 1000),
            "p99_ms": float(np.percentile(lat, 99) * 1000), "rss_peak_mb": rss_peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,48,64,80,96", help="comma-separated stream counts to try")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds each run lasts")
    parser.add_argument("--warmup", type=float, default=8.0, help="stream seconds discarded at the start")
    parser.add_argument("--hop", type=float, default=1.0, help="window hop: the p99 budget for capacity")
    parser.add_argument("--no-whole-window", action="store_true", help="windows.whole_max_s: null (no window "
                        "over the whole utterance at its end: the tail window instead)")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None:
        print("mosquitto is needed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    print(f"machine: {os.cpu_count()} CPUs; model models/default; backend ctranslate2 int8")
    cap = encoder_capacity()
    print(f"encoder + head only ({cap['parallel_batches']} batches of 8 x 2 s windows in parallel): "
          f"{cap['encoder_windows_per_s']:.0f} windows/s ({cap['with_logmel_windows_per_s']:.0f}/s with log-mel)"
          f" -> at most ~{cap['with_logmel_windows_per_s']:.0f} real-time streams at 1 s hop")
    best = 0
    print("| streams | states measured | p50 ms | p99 ms | peak RSS MB |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.streams.split(",")):
            r = run_streams(n, args.duration, args.warmup, Path(tmp), not args.no_whole_window)
            print(f"| {n} | {r['states']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['rss_peak_mb']:.0f} |",
                  flush=True)
            if r["p99_ms"] <= args.hop * 1000:
                best = max(best, n)
    print(f"capacity: {best} concurrent real-time streams with p99 <= {args.hop * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
