"""Two emotion models side by side on the agent's engine: the time one engine call takes, rounds alternating.

    python benchmarks/model_cost.py models/default runs/other-model [--windows 2 --batch 4 --rounds 15]

Each model gets its own CTranslate2 engine (the agent's backend and settings: ``prepare_process`` first, one
replica, ``--threads`` threads, int8 unless told otherwise) on the same batch of real log-mel windows (the
bundled example, cut by ``engine_throughput.real_mels``). Rounds alternate A, B, A, B, ... so drift of a noisy
machine hits both; each round times ``--calls`` calls. Prints the median ms per call of each model and the ratio B / A.
"""

from __future__ import annotations

import argparse
import statistics
import time

from engine_throughput import real_mels

from edge_ser.agent import prepare_process
from edge_ser.backends.ct2_backend import Ct2Engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--windows", type=float, default=2.0, help="window length (s)")
    parser.add_argument("--batch", type=int, default=4, help="windows per engine call")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20, help="engine calls per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compute-type", default="int8")
    args = parser.parse_args(argv)
    prepare_process()
    batch = real_mels(args.windows, args.batch)
    engines = {name: Ct2Engine(name, compute_type=args.compute_type, intra_threads=args.threads,
                                    inter_threads=1)
               for name in (args.model_a, args.model_b)}
    if len(engines) != 2:
        parser.error("give two different model folders")
    for engine in engines.values():
        for _ in range(3):
            engine.infer(batch)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                engine.infer(batch)
            times[name].append((time.perf_counter() - start) / args.calls * 1000)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, engine in engines.items():
        print(f"{name}: {engine.meta.model_id}, head hidden {engine.meta.head['hidden']}: "
              f"{medians[name]:.2f} ms per call of {args.batch} x {args.windows:g} s ({args.compute_type}, "
              f"{args.threads} thread(s); median of {args.rounds} rounds x {args.calls} calls)")
    print(f"ratio {args.model_b} / {args.model_a}: {medians[args.model_b] / medians[args.model_a]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
