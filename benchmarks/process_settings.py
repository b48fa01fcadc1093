"""What the agent's process-wide settings buy: the CTranslate2 engine with and without each, side by side.

Variants (each in its own process, because CTranslate2 reads its ISA once and glibc's allocator settings
are process-wide):

* ``agent``: what ``edge_ser.agent.prepare_process`` sets up (the ``memory`` defaults: fixed mmap
  threshold, high trim threshold, 2 arenas) and ``engine.cpu_isa: auto``;
* ``glibc-malloc``: the same, with glibc's allocator defaults;
* ``ct2-isa``: the same as ``agent``, with CTranslate2's own ISA choice (AVX2 on AMD CPUs).

Each worker loads the shipped model as one single-threaded replica (the agent runs one per core) and, on
each round, times --calls engine calls on the same batch of real 2 s log-mel windows. Rounds alternate
between the variants, so drift of a shared machine hits them alike; the script prints each variant's median
ms per call and the median over rounds of (variant time / agent time).

    python benchmarks/process_settings.py --rounds 12 --batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, object]] = {
    "agent": {"memory": True, "cpu_isa": "auto"},
    "glibc-malloc": {"memory": False, "cpu_isa": "auto"},
    "ct2-isa": {"memory": True, "cpu_isa": "ctranslate2"},
}

WORKER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
settings = json.loads(sys.argv[2])
from edge_ser.agent import prepare_process
from edge_ser.memory import MemoryConfig
prepare_process(MemoryConfig() if settings["memory"] else MemoryConfig(**dict.fromkeys(MemoryConfig.model_fields)))
from edge_ser.backends.ct2_backend import Ct2Engine
from engine_throughput import real_mels
engine = Ct2Engine(settings["model"], compute_type="int8", inter_threads=1, intra_threads=1,
                   cpu_isa=settings["cpu_isa"])
mels = real_mels(2.0, settings["batch"])
for _ in range(3):
    engine.infer(mels)
print(json.dumps({"isa": engine.cpu_isa}), flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    for _ in range(settings["calls"]):
        engine.infer(mels)
    print((time.perf_counter() - start) / settings["calls"], flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds")
    parser.add_argument("--calls", type=int, default=10, help="timed engine calls per variant and round")
    parser.add_argument("--batch", type=int, default=4, help="2 s windows per call")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("CT2_FORCE_CPU_ISA", "GLIBC_TUNABLES")}
    workers: dict[str, subprocess.Popen[str]] = {}
    isas: dict[str, str] = {}
    for name, settings in VARIANTS.items():
        payload = json.dumps({**settings, "model": str(args.model), "batch": args.batch, "calls": args.calls})
        workers[name] = subprocess.Popen([sys.executable, "-c", WORKER, str(ROOT / "benchmarks"), payload],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                         env=env)
        assert workers[name].stdout is not None
        isas[name] = json.loads(workers[name].stdout.readline())["isa"] or "CTranslate2's choice"
    times: dict[str, list[float]] = {name: [] for name in workers}
    try:
        for _ in range(args.rounds):
            for name, worker in workers.items():
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
                times[name].append(float(worker.stdout.readline()))
    finally:
        for worker in workers.values():
            if worker.stdin:
                worker.stdin.close()
            worker.wait(30)
    print(f"CTranslate2 int8, 1 replica x 1 thread, {args.batch} x 2 s real windows per call, {args.calls} calls x "
          f"{args.rounds} alternating rounds")
    print("| variant | ISA | median ms / call | windows / s (one core) | time / agent's (median of rounds) |")
    print("|---|---|---:|---:|---:|")
    for name, values in times.items():
        ratio = statistics.median(a / b for a, b in zip(values, times["agent"], strict=True))
        median = statistics.median(values)
        print(f"| {name} | {isas[name]} | {median * 1000:.2f} | {args.batch / median:.1f} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
