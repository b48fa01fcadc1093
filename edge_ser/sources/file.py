"""Replay an audio file (WAV, FLAC, Ogg/Opus, Ogg/Vorbis) as one stream, at real-time pace or as fast as possible.

Real-time pacing follows a monotonic schedule fixed at the start (block ``k`` is delivered when the wall
clock reaches ``start + block.t1``, as a microphone would), so per-block jitter never accumulates into
drift. The file is decoded block by block in a worker thread; a long recording never sits in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edge_ser.audio import AudioError, describe_file, iter_audio_blocks
from edge_ser.sources.base import AudioSink, Source, SourceConfigBase
from edge_ser.types import SAMPLE_RATE, AudioBlock

log = logging.getLogger(__name__)

READ_AHEAD_S = 1.0
"""Seconds of audio decoded per trip to the worker thread."""


class FileSourceConfig(SourceConfigBase):
    """Replay of one audio file as the stream ``id``."""

    type: Literal["file"] = Field("file", description="Source kind: replay an audio file.")
    path: Path = Field(description="Audio file to replay (WAV, FLAC, Ogg/Opus, Ogg/Vorbis; any rate/channels).")
    realtime: bool = Field(True, description="Deliver audio at real-time pace (false: as fast as the "
                                             "pipeline accepts it).")
    speed: float = Field(1.0, gt=0.0, le=1000.0, description="Pace multiplier when realtime: 10 delivers ten "
                                                              "seconds of audio per wall-clock second (an "
                                                              "accelerated replay for soak and fault tests).")
    start_s: float = Field(0.0, ge=0.0, description="Begin the replay this many seconds into the file (stream "
                                                    "time still starts at 0; a loop starts over at 0).")
    loop: bool = Field(False, description="Start over at the end of the file (stream time keeps counting).")
    block_s: float = Field(0.1, ge=0.01, le=2.0, description="Seconds of audio per delivered block.")


def _take(blocks: Iterator[np.ndarray], n: int) -> list[np.ndarray]:
    """Up to ``n`` next items of ``blocks`` (runs in a worker thread: decoding is blocking)."""
    out: list[np.ndarray] = []
    for samples in blocks:
        out.append(samples)
        if len(out) >= n:
            break
    return out


class FileSource(Source):
    """Replays ``config.path`` into the sink as stream ``config.id``."""

    def __init__(self, config: FileSourceConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock

    async def run(self, sink: AudioSink) -> None:
        cfg = self.config
        try:
            info = await asyncio.to_thread(describe_file, cfg.path)
        except AudioError as exc:
            log.error("file source %s: %s", cfg.id, exc)
            await sink.stream_ended(cfg.id, str(exc), True)
            return
        description = (f"file {cfg.path} ({info['format']}, {info['sample_rate']} Hz, {info['channels']} ch, "
                       f"{info['duration_s']:.1f} s{self._pace()}"
                       f"{', loop' if cfg.loop else ''})")
        await sink.stream_started(cfg.id, {"source": "file", "description": description, **info,
                                           "realtime": cfg.realtime, "speed": cfg.speed, "loop": cfg.loop})
        try:
            await self._replay(sink)
        except AudioError as exc:
            log.error("file source %s: %s", cfg.id, exc)
            await sink.stream_ended(cfg.id, str(exc), True)
            return
        except Exception as exc:  # a stream's failure is reported, never raised
            log.exception("file source %s failed", cfg.id)
            await sink.stream_ended(cfg.id, f"replay failed: {exc!r}", True)
            return
        await sink.stream_ended(cfg.id, "end of file", False)

    def _pace(self) -> str:
        if not self.config.realtime:
            return ""
        return ", realtime" if self.config.speed == 1.0 else f", realtime x{self.config.speed:g}"

    async def _replay(self, sink: AudioSink) -> None:
        cfg = self.config
        per_trip = max(1, round(READ_AHEAD_S / cfg.block_s))
        emitted = 0  # samples delivered so far: the next block's t0 * SAMPLE_RATE
        start_s = cfg.start_s  # the first pass only; a loop starts over at 0
        start = self._clock()
        while True:
            blocks = iter_audio_blocks(cfg.path, cfg.block_s, start_s)
            start_s = 0.0
            try:
                while batch := await asyncio.to_thread(_take, blocks, per_trip):
                    for samples in batch:
                        block = AudioBlock(cfg.id, emitted / SAMPLE_RATE, samples)
                        emitted += samples.size
                        if cfg.realtime:
                            await asyncio.sleep(max(0.0, start + block.t1 / cfg.speed - self._clock()))
                        else:
                            await asyncio.sleep(0)  # let other tasks run even if the sink never suspends
                        await sink.audio(block)
            finally:
                with contextlib.suppress(ValueError):  # still running in a thread after a cancellation
                    blocks.close()
            if not cfg.loop:
                return
            log.debug("file source %s: looping at t=%.2f s", cfg.id, emitted / SAMPLE_RATE)
