"""What the window-statistics term costs per window, measured side by side with the engine without it.

For real two-second windows of the bundled example, the median milliseconds per window of the CTranslate2
int8 engine with the model's window-statistics term (``make_engine(..., stats=True)``) and without it (the
agent's default), one window per call and batches of 8, alternating, each repeated --repeats times; and of
the term alone (the statistics of one window's features and the classifier).

    python benchmarks/stats_cost.py [--model models/default] [--repeats 50]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from prosody_cost import median_ms

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    from edge_ser.audio import load_audio
    from edge_ser.backends import Ct2EngineConfig, make_engine
    from edge_ser.checkpoint import read_meta
    from edge_ser.features import log_mel
    from edge_ser.window_stats import window_statistics

    if read_meta(args.model).stats is None:
        raise SystemExit(f"{args.model}: the model has no window-statistics classifier")
    config = Ct2EngineConfig(inter_threads=1)
    engines = {"without the term": make_engine(config, args.model), "with it": make_engine(config, args.model,
                                                                                          stats=True)}
    audio = load_audio(ROOT / "examples" / "emodb_shifts.opus")
    mels = [log_mel(audio[i * 16000 : i * 16000 + 32000]) for i in range(8)]
    for engine in engines.values():
        engine.warmup()
    head = engines["with it"].head  # type: ignore[attr-defined]
    features = np.random.default_rng(0).normal(0, 1, (100, len(head.gamma))).astype(np.float32)
    rows: dict[str, list[float]] = {}
    for _ in range(3):  # alternate the engines, so drifts of the machine reach both alike
        for name, engine in engines.items():
            rows.setdefault(f"engine {name}, 1 window per call", []).append(
                median_ms(lambda e=engine: e.infer(mels[:1]), args.repeats))
            rows.setdefault(f"engine {name}, batches of 8", []).append(
                median_ms(lambda e=engine: e.infer(mels), args.repeats, per_call=8))
    term = median_ms(lambda: head.stats.logit_bias(window_statistics(features)[None]), args.repeats)
    print(f"model {engines['with it'].model_id}, CTranslate2 int8, 2 s windows, ms per window "
          f"(median of {args.repeats}, then the median of 3 alternating rounds):")
    for name, values in rows.items():
        print(f"  {name}: {np.median(values):.2f}")
    print(f"  the term alone (statistics of 100 frames + classifier): {term:.3f}")


if __name__ == "__main__":
    main()
