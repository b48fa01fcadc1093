"""DynamicBatcher (pure scheduling logic, so a deterministic fake engine): batch size and wait bounds,
results routed to the right caller, ``concurrency`` batches in flight together, failures confined to their
batch, and a bounded close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from edge_ser.backends.base import Engine, FrameScores
from edge_ser.batching import BatchingConfig, DynamicBatcher
from edge_ser.types import Window


class FakeEngine(Engine):
    """Scores a window by its first sample (so results can be traced back); records batch sizes."""

    labels = ("a", "b")
    model_id = "fake"

    def __init__(self, concurrency: int = 1, delay_s: float = 0.0, fail_on: float | None = None) -> None:
        self.concurrency = concurrency
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def infer(self, mels: Sequence[np.ndarray], offsets: Sequence[np.ndarray | None] | None = None
              ) -> list[FrameScores]:
        raise AssertionError("the batcher calls infer through _infer with log-mels; see FakeBatcher")

    def score(self, windows: list[Window]) -> list[FrameScores]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.batches.append(len(windows))
        try:
            time.sleep(self.delay_s)
            if self.fail_on is not None and any(w.samples[0] == self.fail_on for w in windows):
                raise RuntimeError("engine failure")
            return [FrameScores(logits=np.array([[float(w.samples[0]), 0.0]], np.float32),
                                weights=np.ones(1, np.float32)) for w in windows]
        finally:
            with self._lock:
                self.running -= 1


class FakeBatcher(DynamicBatcher):
    def _infer(self, windows: list[Window]) -> list[FrameScores]:  # no log-mel: the fake scores samples
        assert isinstance(self.engine, FakeEngine)
        return self.engine.score(windows)


def window(value: float) -> Window:
    return Window("s", 0, 0.0, 1.0, np.full(16000, value, np.float32))


def test_results_reach_their_callers_in_batches_of_at_most_max_batch() -> None:
    engine = FakeEngine(delay_s=0.01)

    async def main() -> list[float]:
        batcher = FakeBatcher(engine, BatchingConfig(max_batch=4, max_wait_ms=50))
        batcher.start()
        futures = [await batcher.submit(window(i)) for i in range(10)]
        scores = await asyncio.gather(*futures)
        await batcher.close(1.0)
        return [float(s.logits[0, 0]) for s in scores]

    assert asyncio.run(main()) == list(range(10))
    assert max(engine.batches) <= 4 and sum(engine.batches) == 10


def test_a_lone_window_waits_at_most_max_wait() -> None:
    engine = FakeEngine()

    async def main() -> float:
        batcher = FakeBatcher(engine, BatchingConfig(max_batch=64, max_wait_ms=30))
        batcher.start()
        began = time.monotonic()
        await (await batcher.submit(window(1)))
        took = time.monotonic() - began
        await batcher.close(1.0)
        return took

    assert asyncio.run(main()) < 0.5 and engine.batches == [1]


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_concurrency_batches_are_in_flight_together(concurrency: int) -> None:
    engine = FakeEngine(concurrency=concurrency, delay_s=0.1)

    async def main() -> int:
        batcher = FakeBatcher(engine, BatchingConfig(max_batch=1, max_wait_ms=0))
        batcher.start()
        futures = [await batcher.submit(window(i)) for i in range(6)]
        await asyncio.gather(*futures)
        await batcher.close(1.0)
        return batcher.stats.batches

    assert asyncio.run(main()) == 6
    assert engine.max_running == concurrency


def test_a_failing_batch_fails_only_its_own_windows() -> None:
    engine = FakeEngine(concurrency=2, fail_on=3.0)

    async def main() -> list[str]:
        batcher = FakeBatcher(engine, BatchingConfig(max_batch=1, max_wait_ms=0))
        batcher.start()
        futures = [await batcher.submit(window(i)) for i in range(5)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close(1.0)
        return [type(r).__name__ for r in results]

    assert asyncio.run(main()) == ["FrameScores"] * 3 + ["RuntimeError", "FrameScores"]


def test_close_cancels_what_cannot_finish_within_the_timeout() -> None:
    engine = FakeEngine(concurrency=2, delay_s=0.5)

    async def main() -> tuple[float, list[bool]]:
        batcher = FakeBatcher(engine, BatchingConfig(max_batch=1, max_wait_ms=0))
        batcher.start()
        futures = [await batcher.submit(window(i)) for i in range(8)]
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await batcher.close(0.2)
        return time.monotonic() - began, [f.cancelled() for f in futures]

    took, cancelled = asyncio.run(main())
    assert took < 0.5
    assert all(cancelled), cancelled  # the two in flight and the six queued
