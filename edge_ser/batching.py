"""Dynamic batching: windows from all streams share one engine call, waiting at most ``max_wait_ms``.

One collector task forms batches; up to ``engine.concurrency`` of them are scored at once, each in a worker
thread (log-mel + encoder + head), so the event loop never blocks and one batch's single-threaded parts
overlap another's encoder. A batch is formed only when a slot is free, so windows that arrive while the
engine is busy join the next batch. Callers ``await submit(window)`` and get that window's ``FrameScores``
(per stream, the pipeline consumes them in submission order whatever order the batches finish in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from edge_ser.backends.base import Engine, FrameScores
from edge_ser.features import FeatureParams, log_mel
from edge_ser.types import Window

log = logging.getLogger(__name__)


class BatchingConfig(BaseModel):
    """How windows from all streams are grouped into engine calls."""

    model_config = ConfigDict(extra="forbid")
    max_batch: int = Field(16, ge=1, le=512, description="Most windows in one engine call.")
    max_wait_ms: float = Field(20.0, ge=0, le=5000, description="Longest a window waits for others to join.")
    max_pending: int = Field(1024, ge=1, description="Windows queued before submit() waits (backpressure).")


@dataclass(slots=True)
class BatchStats:
    batches: int = 0
    windows: int = 0
    busy_s: float = 0.0  # summed over batches in flight together (may exceed wall time)
    last_progress: float = 0.0  # monotonic time of the last finished batch


class DynamicBatcher:
    """Collects windows into batches and runs up to ``engine.concurrency`` of them at once in worker threads."""

    def __init__(self, engine: Engine, config: BatchingConfig, params: FeatureParams | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.config = config
        self.params = params or FeatureParams()
        self.clock = clock
        self.stats = BatchStats(last_progress=clock())
        self._queue: asyncio.Queue[tuple[Window, asyncio.Future[FrameScores]]] = asyncio.Queue(config.max_pending)
        self._worker: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(max(1, int(getattr(engine, "concurrency", 1))))
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="batcher")

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def submit(self, window: Window) -> asyncio.Future[FrameScores]:
        """Queue ``window``; returns a future resolved with its scores (awaits only when the queue is full)."""
        future: asyncio.Future[FrameScores] = asyncio.get_running_loop().create_future()
        await self._queue.put((window, future))
        return future

    def _infer(self, windows: list[Window]) -> list[FrameScores]:
        mels = [log_mel(w.samples, self.params) for w in windows]
        offsets = [w.offset for w in windows]
        scores = self.engine.infer(mels, offsets if any(o is not None for o in offsets) else None)
        if self.engine.prosody is not None:
            scores = self.engine.prosody.apply(scores, [w.samples for w in windows])
        return scores

    @property
    def in_flight(self) -> int:
        """Batches being scored now."""
        return len(self._inflight)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect(loop)
            except BaseException:
                self._slots.release()
                raise
            live = [(w, f) for w, f in batch if not f.cancelled()]
            if not live:
                self._slots.release()
                continue
            task = asyncio.create_task(self._score(live), name="batch")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[tuple[Window, asyncio.Future[FrameScores]]]:
        batch = [await self._queue.get()]
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while len(batch) < self.config.max_batch:
            timeout = deadline - loop.time()
            if timeout <= 0 and self._queue.empty():
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), max(timeout, 0)))
            except TimeoutError:
                break
        return batch

    async def _score(self, live: list[tuple[Window, asyncio.Future[FrameScores]]]) -> None:
        started = self.clock()
        try:
            scores = await asyncio.to_thread(self._infer, [w for w, _ in live])
        except asyncio.CancelledError:
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:  # one bad batch must not stop the agent; each caller gets the error
            log.exception("inference failed for a batch of %d windows", len(live))
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._slots.release()
        finished = self.clock()
        self.stats.batches += 1
        self.stats.windows += len(live)
        self.stats.busy_s += finished - started
        self.stats.last_progress = finished
        for (_, future), score in zip(live, scores, strict=True):
            if not future.done():
                future.set_result(score)

    def stuck(self, limit_s: float) -> bool:
        """True when windows wait but no batch finished for ``limit_s`` (the watchdog stops feeding)."""
        return self.pending > 0 and self.clock() - self.stats.last_progress > limit_s

    async def close(self, timeout: float = 5.0) -> None:
        """Finish the windows already queued for at most ``timeout`` seconds, then stop the worker; windows
        still waiting after that are cancelled (an overloaded agent must still stop promptly)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._queue.qsize() or self._inflight) and self._worker and not self._worker.done() \
                and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        late = list(self._inflight)
        for task in late:  # past the deadline: their windows are cancelled (the thread finishes unobserved)
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        abandoned = 0
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.cancel()
                abandoned += 1
        if abandoned:
            log.warning("stopped with %d window(s) not scored (shutdown timeout %.1f s)", abandoned, timeout)
