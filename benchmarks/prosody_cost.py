"""What the prosody classifier costs per window, beside what the encoder costs, measured side by side.

For real two-second windows of the bundled example, the median milliseconds per window of: the log-mel, the
CTranslate2 int8 engine (one window per call, and batches of 8), and the prosody term (openSMILE eGeMAPSv02
functionals + the classifier; for a model without one, a classifier of the same shape), each repeated
--repeats times in turn. It also measures how much of the GIL
the extraction holds: the rate of a pure-Python counter in the main thread while another thread extracts
functionals, against its rate while that thread sleeps (1.0: the extraction never blocks Python code, such
as the agent's event loop).

    python benchmarks/prosody_cost.py [--model models/default] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def median_ms(call: Callable[[], object], repeats: int, per_call: int = 1) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000 / per_call)
    return statistics.median(times)


def counter_rate(work: Callable[[], object], seconds: float) -> float:
    """Increments per second of a Python loop in this thread while ``work`` runs repeatedly in another."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            work()

    thread = threading.Thread(target=loop)
    thread.start()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        count += 1
    stop.set()
    thread.join()
    return count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--gil-seconds", type=float, default=3.0)
    args = parser.parse_args()

    from edge_ser.agent import prepare_process
    from edge_ser.audio import load_audio
    from edge_ser.backends.ct2_backend import Ct2Engine
    from edge_ser.features import log_mel
    from edge_ser.prosody import N_FUNCTIONALS, ProsodyHead, ProsodyScorer, load_prosody

    prepare_process()  # as the agent does
    engine = Ct2Engine(args.model, compute_type="int8")
    prosody = load_prosody(args.model)
    if prosody is None:  # the time is openSMILE's; a classifier of the same shape with zero weights costs the same
        print(f"{args.model} has no prosody classifier: timing one of the same shape with zero weights")
        classes = len(engine.labels)
        prosody = ProsodyScorer(ProsodyHead(np.zeros((1, N_FUNCTIONALS), np.float32),
                                            np.ones((1, N_FUNCTIONALS), np.float32),
                                            np.zeros((1, classes, N_FUNCTIONALS), np.float32),
                                            np.zeros((1, classes), np.float32), fusion_weight=0.3))
    audio = load_audio(ROOT / "examples" / "emodb_shifts.opus")
    windows = [audio[i * 16000 : i * 16000 + 32000] for i in range(8)]
    mels = [log_mel(w) for w in windows]
    engine.infer(mels)
    prosody.bias(windows[:1])
    rows = {
        "log-mel": median_ms(lambda: log_mel(windows[0]), args.repeats),
        "engine, 1 window per call": median_ms(lambda: engine.infer(mels[:1]), args.repeats),
        "engine, batches of 8 (per window)": median_ms(lambda: engine.infer(mels), args.repeats, per_call=8),
        "prosody term (functionals + classifier)": median_ms(lambda: prosody.bias(windows[:1]), args.repeats),
    }
    print(f"model {engine.model_id}, CTranslate2 int8, 2 s windows, median of {args.repeats}:")
    for name, value in rows.items():
        print(f"  {name:42s} {value:8.2f} ms")
    encoder = rows["log-mel"] + rows["engine, batches of 8 (per window)"]
    ratio = rows["prosody term (functionals + classifier)"] / encoder
    print(f"  {'prosody / (log-mel + batched engine)':42s} {ratio:8.2f}x")
    idle = counter_rate(lambda: time.sleep(0.01), args.gil_seconds)
    busy = counter_rate(lambda: prosody.bias(windows[:1]), args.gil_seconds)
    print(f"  Python progress while extracting: {busy / idle:.2f} of its rate beside a sleeping thread "
          f"({busy:.3g} against {idle:.3g} loops/s)")


if __name__ == "__main__":
    main()
