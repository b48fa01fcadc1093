"""The asyncio shell that wires the pure stages together for every stream of one agent process.

    Source.run(sink) -> Pipeline (the AudioSink) -> per stream: Segmenter -> Windower -> DynamicBatcher
    -> (in order) Smoother + UtteranceTracker -> EventBuilder -> Publisher

With stream adaptation (``edge_ser.centring``), each window leaves with its stream's current offset and its
scored feature mean goes back into the stream's running mean, in stream order.

Each stream has a bounded, ordered queue of work items consumed by its own task, so results are smoothed
and published in stream order even though windows of all streams share engine batches. A failing stream
reports its status and stops alone; the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_ser import memory
from edge_ser.backends.base import FrameScores
from edge_ser.batching import DynamicBatcher
from edge_ser.centring import CentringConfig, StreamCentring
from edge_ser.events import EventBuilder
from edge_ser.publish import OutboundMessage, Publisher
from edge_ser.smoothing import Shift, SmootherConfig, StateUpdate, make_smoother
from edge_ser.types import SAMPLE_RATE, AudioBlock, SpeechBoundary, Window
from edge_ser.utterances import Utterance, UtteranceTracker
from edge_ser.vad import Segmenter, VadConfig
from edge_ser.windows import WindowConfig, Windower

log = logging.getLogger(__name__)

GAP_TICK_S = 0.5  # how often silence advances the smoother's clock (states keep their 1 s grid)
LATENCY_SAMPLES = 2048


@dataclass
class StreamStats:
    """Counters for one stream (published on the stats topic and exported as metrics)."""

    audio_s: float = 0.0
    speech_s: float = 0.0
    windows: int = 0
    windows_failed: int = 0
    states: int = 0
    shifts: int = 0
    utterances: int = 0
    adapted_s: float | None = None  # speech in the stream's centring mean (None: no stream adaptation)
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def to_dict(self) -> dict[str, Any]:
        lat = np.array(self.latencies_s) if self.latencies_s else None
        return {
            "audio_s": round(self.audio_s, 3),
            "speech_ratio": round(self.speech_s / self.audio_s, 4) if self.audio_s else 0.0,
            "windows": self.windows,
            "windows_failed": self.windows_failed,
            "states": self.states,
            "shifts": self.shifts,
            "utterances": self.utterances,
            "adapted_s": None if self.adapted_s is None else round(self.adapted_s, 1),
            "latency_p50_ms": None if lat is None else round(float(np.percentile(lat, 50)) * 1000, 1),
            "latency_p99_ms": None if lat is None else round(float(np.percentile(lat, 99)) * 1000, 1),
        }


_Item = tuple[str, Any]


class StreamWorker:
    """One stream's pure stages plus the ordered consumer task that smooths and publishes."""

    def __init__(self, stream_id: str, pipeline: Pipeline, info: dict[str, Any]) -> None:
        self.stream_id = stream_id
        self.pipeline = pipeline
        self.info = info
        self.segmenter = Segmenter(stream_id, pipeline.vad_config)
        self.windower = Windower(stream_id, pipeline.window_config)
        self.smoother = make_smoother(pipeline.smoother_config, list(pipeline.labels))
        self.utterances = UtteranceTracker(pipeline.labels)
        self.events = EventBuilder(pipeline.device_id, stream_id, pipeline.model_id, pipeline.run_id,
                                   labels=pipeline.labels)
        self.stats = StreamStats()
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(pipeline.stream_queue)
        self.in_speech = False
        self.last_t = 0.0
        self.last_gap_t = 0.0
        self.last_window_end: float | None = None
        self.centring = None if pipeline.reference is None else StreamCentring(pipeline.centring_config,
                                                                                  pipeline.reference)
        self.task = asyncio.create_task(self._consume(), name=f"stream-{stream_id}")

    async def audio(self, block: AudioBlock) -> None:
        self.stats.audio_s += len(block.samples) / SAMPLE_RATE
        self.last_t = block.t1
        for item in self.segmenter.push(block):
            await self._route(item)
        if not self.in_speech and block.t1 - self.last_gap_t >= GAP_TICK_S:
            self.last_gap_t = block.t1
            await self.queue.put(("gap", block.t1))

    async def _route(self, item: SpeechBoundary | AudioBlock) -> None:
        if isinstance(item, SpeechBoundary):
            self.in_speech = item.kind == "start"
            await self.queue.put(("boundary", item))
        else:
            self.stats.speech_s += len(item.samples) / SAMPLE_RATE
        for window in self.windower.push(item):
            await self._submit(window)

    async def _submit(self, window: Window) -> None:
        offset = None if self.centring is None else self.centring.offset(window.t0)
        ready = dataclasses.replace(window, ready_at=self.pipeline.clock(), offset=offset)
        future = await self.pipeline.batcher.submit(ready)
        await self.queue.put(("window", (ready, future)))

    async def finish(self, reason: str, error: bool) -> None:
        """Flush the stages (the open segment's last windows are still scored), then stop the consumer."""
        for item in self.segmenter.flush():
            await self._route(item)
        for window in self.windower.flush():
            await self._submit(window)
        await self.queue.put(("end", (reason, error)))
        await self.task

    def _publish(self, kind: str, payload: dict[str, Any], retain: bool = False) -> None:
        self.pipeline.publisher.publish(OutboundMessage(kind=kind, stream_id=self.stream_id, payload=payload,
                                                        retain=retain))

    def _emit(self, outputs: list[StateUpdate | Shift]) -> None:
        wall = self.pipeline.wall_clock()
        for out in outputs:
            if isinstance(out, StateUpdate):
                self.stats.states += 1
                self._publish("state", self.events.state(out, wall, self.last_window_end), retain=True)
            else:
                self.stats.shifts += 1
                self._publish("event", self.events.shift(out, wall))

    def _emit_utterances(self, utterances: list[Utterance]) -> None:
        for utterance in utterances:
            self.stats.utterances += 1
            self._publish("segment", self.events.utterance(utterance, self.pipeline.wall_clock()))

    async def _consume(self) -> None:
        while True:
            kind, value = await self.queue.get()
            try:
                if kind == "window":
                    window, future = value
                    try:
                        scores: FrameScores = await future
                    except Exception as exc:
                        self.stats.windows_failed += 1
                        log.warning("stream %s: window %.2f-%.2f s failed: %s", self.stream_id, window.t0,
                                    window.t1, exc)
                        continue
                    self.stats.windows += 1
                    self.last_window_end = window.t1
                    self._adapt(window, scores)
                    probs = scores.clip_probs()
                    self._emit_utterances(self.utterances.push(window.segment_id, window.t0, window.t1, probs))
                    self._emit(self.smoother.push(window.t0, window.t1, probs))
                    latency = self.pipeline.clock() - window.ready_at
                    self.stats.latencies_s.append(latency)
                    if self.pipeline.on_latency is not None:
                        self.pipeline.on_latency(self.stream_id, latency)
                elif kind == "boundary":
                    self._publish("segment", self.events.segment(value, self.pipeline.wall_clock()))
                    if value.kind == "start":  # the previous segment's windows were all queued before this
                        self._emit_utterances(self.utterances.close())
                        self._emit(self.smoother.segment(value.t))
                elif kind == "gap":
                    self._emit_utterances(self.utterances.close())
                    self._emit(self.smoother.gap(value))
                elif kind == "end":
                    reason, error = value
                    self._emit_utterances(self.utterances.close())
                    self._emit(self.smoother.flush(self.last_t))
                    self.status("error" if error else "ended", reason)
                    return
            finally:
                self.queue.task_done()

    def _adapt(self, window: Window, scores: FrameScores) -> None:
        """Add the scored window's feature mean to the stream's adaptation (edge_ser.centring)."""
        if self.centring is None or scores.feature_mean is None:
            return
        self.centring.push(scores.feature_mean, window.segment_id, window.t0, window.t1)
        self.stats.adapted_s = self.centring.heard_s

    def status(self, status: str, detail: str = "") -> None:
        payload = self.events.stream_status(status, self.last_t, self.pipeline.wall_clock(), detail or None)
        self._publish("stream_status", payload, retain=True)


class Pipeline:
    """The AudioSink every source writes into; owns the stream workers."""

    def __init__(self, *, device_id: str, model_id: str, labels: tuple[str, ...], run_id: str,
                 batcher: DynamicBatcher, publisher: Publisher, vad_config: VadConfig,
                 window_config: WindowConfig, smoother_config: SmootherConfig, stream_queue: int = 512,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 centring_config: CentringConfig | None = None, reference: np.ndarray | None = None) -> None:
        self.device_id = device_id
        self.model_id = model_id
        self.labels = labels
        self.run_id = run_id
        self.batcher = batcher
        self.publisher = publisher
        self.vad_config = vad_config
        self.window_config = window_config
        self.smoother_config = smoother_config
        self.stream_queue = stream_queue
        self.centring_config = centring_config or CentringConfig()
        # stream adaptation: on when enabled and the model has a reference (edge_ser.centring)
        self.reference = reference if self.centring_config.enabled else None
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_latency: Callable[[str, float], None] | None = None  # metrics hook
        self.streams: dict[str, StreamWorker] = {}
        self.finished: dict[str, dict[str, Any]] = {}

    def stream_status(self, stream_id: str, status: str, detail: str = "") -> None:
        """Status of a stream that has no worker (it failed before its first audio)."""
        builder = EventBuilder(self.device_id, stream_id, self.model_id, self.run_id, labels=self.labels)
        payload = builder.stream_status(status, 0.0, self.wall_clock(), detail or None)
        self.publisher.publish(OutboundMessage(kind="stream_status", stream_id=stream_id, payload=payload,
                                               retain=True))

    async def stream_started(self, stream_id: str, info: dict[str, Any]) -> None:
        if stream_id in self.streams:
            raise ValueError(f"stream id {stream_id!r} is already live")
        log.info("stream %s started: %s", stream_id, info)
        worker = StreamWorker(stream_id, self, info)
        self.streams[stream_id] = worker
        worker.status("online", str(info.get("description", "")))

    async def audio(self, block: AudioBlock) -> None:
        worker = self.streams.get(block.stream_id)
        if worker is None:
            raise KeyError(f"audio for stream {block.stream_id!r} before stream_started")
        await worker.audio(block)

    async def stream_ended(self, stream_id: str, reason: str, error: bool) -> None:
        worker = self.streams.pop(stream_id, None)
        if worker is None:  # failed before its first audio (missing file, no microphone)
            log.warning("stream %s failed to start: %s", stream_id, reason)
            self.stream_status(stream_id, "error" if error else "ended", reason)
            return
        (log.warning if error else log.info)("stream %s ended: %s", stream_id, reason)
        await worker.finish(reason, error)
        self.finished[stream_id] = worker.stats.to_dict()

    async def close(self) -> None:
        """End every live stream (their windows in flight are still scored and published)."""
        for stream_id in list(self.streams):
            await self.stream_ended(stream_id, "agent stopping", False)

    def stats(self) -> dict[str, Any]:
        batch = self.batcher.stats
        return {
            "streams": {sid: w.stats.to_dict() for sid, w in self.streams.items()},
            "streams_live": len(self.streams),
            "batches": batch.batches,
            "windows": batch.windows,
            "mean_batch": round(batch.windows / batch.batches, 2) if batch.batches else 0.0,
            "engine_busy_s": round(batch.busy_s, 3),
            "pending_windows": self.batcher.pending,
            "batches_in_flight": self.batcher.in_flight,
            "publisher": self.publisher.stats(),
            "memory": memory.snapshot().to_dict(),
        }

    async def cancel(self) -> None:
        for worker in self.streams.values():
            worker.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.task
