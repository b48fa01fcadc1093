"""The running sources of one agent, keyed by source id, so a reload (SIGHUP) can add, remove or restart
sources while every other stream goes on untouched.

Each source writes into the pipeline through an ``_OwnedSink`` that remembers which streams it opened, so
stopping a source ends exactly its streams (a network source owns one stream per live call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from edge_ser.pipeline import Pipeline
from edge_ser.sources import SourceConfig, make_source
from edge_ser.types import AudioBlock

log = logging.getLogger(__name__)


class _OwnedSink:
    """Forwards to the pipeline and records the stream ids this source opened."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.streams: set[str] = set()

    async def stream_started(self, stream_id: str, info: dict[str, Any]) -> None:
        await self.pipeline.stream_started(stream_id, info)
        self.streams.add(stream_id)

    async def audio(self, block: AudioBlock) -> None:
        await self.pipeline.audio(block)

    async def stream_ended(self, stream_id: str, reason: str, error: bool) -> None:
        self.streams.discard(stream_id)
        await self.pipeline.stream_ended(stream_id, reason, error)


@dataclass
class _Running:
    config: Any
    task: asyncio.Task[None]
    sink: _OwnedSink = field(repr=False)


class SourceSet:
    """Starts, stops and reconfigures sources; ``finished`` is set when none is running any more."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.running: dict[str, _Running] = {}
        self.finished = asyncio.Event()

    def start(self, config: SourceConfig) -> None:
        sink = _OwnedSink(self.pipeline)
        task = asyncio.create_task(make_source(config).run(sink), name=f"source-{config.id}")
        self.running[config.id] = _Running(config, task, sink)
        self.finished.clear()
        task.add_done_callback(lambda t, sid=config.id: self._done(sid, t))

    def _done(self, source_id: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("source %s failed: %r", source_id, task.exception())
        entry = self.running.get(source_id)
        if entry is not None and entry.task is task:
            del self.running[source_id]
        if not self.running:
            self.finished.set()

    async def stop(self, source_id: str, reason: str) -> None:
        """Cancel one source and end the streams it still has open (their windows are still scored)."""
        entry = self.running.pop(source_id, None)
        if entry is None:
            return
        entry.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await entry.task
        for stream_id in sorted(entry.sink.streams):
            await self.pipeline.stream_ended(stream_id, reason, False)
        if not self.running:
            self.finished.set()

    async def apply(self, configs: list[SourceConfig]) -> dict[str, list[str]]:
        """Make the running sources match ``configs``: unchanged ones keep running, changed ones restart."""
        wanted = {c.id: c for c in configs}
        removed = [sid for sid in self.running if sid not in wanted]
        changed = [sid for sid, c in wanted.items() if sid in self.running and self.running[sid].config != c]
        added = [sid for sid in wanted if sid not in self.running]
        for sid in removed:
            await self.stop(sid, "removed by configuration reload")
        for sid in changed:
            await self.stop(sid, "restarted by configuration reload")
            self.start(wanted[sid])
        for sid in added:
            self.start(wanted[sid])
        kept = [sid for sid in wanted if sid not in changed and sid not in added]
        return {"added": added, "removed": removed, "restarted": changed, "kept": kept}

    async def stop_all(self) -> None:
        for source_id in list(self.running):
            await self.stop(source_id, "agent stopping")
