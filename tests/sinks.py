"""Test helper: an AudioSink that records what a source delivers (shared by the source and fuzz tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from edge_ser.types import AudioBlock


class RecordingSink:
    """An AudioSink that keeps everything and lets a test wait for a stream's end."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.started: dict[str, dict[str, Any]] = {}
        self.blocks: dict[str, list[AudioBlock]] = {}
        self.ended: dict[str, tuple[str, bool]] = {}
        self.events: list[tuple[str, str]] = []
        self.delay_s = delay_s
        self._ended_events: dict[str, asyncio.Event] = {}

    def _event(self, stream_id: str) -> asyncio.Event:
        return self._ended_events.setdefault(stream_id, asyncio.Event())

    async def stream_started(self, stream_id: str, info: dict[str, Any]) -> None:
        self.events.append(("started", stream_id))
        self.started[stream_id] = info
        self.blocks[stream_id] = []

    async def audio(self, block: AudioBlock) -> None:
        assert block.stream_id in self.started, "audio before stream_started"
        self.blocks[block.stream_id].append(block)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    async def stream_ended(self, stream_id: str, reason: str, error: bool) -> None:
        self.events.append(("ended", stream_id))
        self.ended[stream_id] = (reason, error)
        self._event(stream_id).set()

    async def wait_ended(self, stream_id: str) -> tuple[str, bool]:
        await self._event(stream_id).wait()
        return self.ended[stream_id]

    def samples(self, stream_id: str) -> np.ndarray:
        blocks = self.blocks.get(stream_id, [])
        expected_t = 0.0
        for b in blocks:  # t0 is stream-relative and continuous
            assert b.samples.dtype == np.float32 and b.samples.ndim == 1
            assert b.t0 == pytest.approx(expected_t, abs=1e-9)
            expected_t = b.t1
        return np.concatenate([b.samples for b in blocks]) if blocks else np.zeros(0, np.float32)
