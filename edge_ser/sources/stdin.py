"""Raw PCM from standard input (s16le or f32le, any rate and channel count) as one stream.

Pipes, sockets and terminals are read through the event loop (``connect_read_pipe`` on a duplicate of the
descriptor), so a silent producer never blocks other streams and cancellation is immediate; a regular file
redirected to stdin (which the loop cannot poll) is read in a worker thread instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
from typing import BinaryIO, Literal

import numpy as np
from pydantic import Field

from edge_ser.audio import AudioError, MonoResampler, check_finite, downmix
from edge_ser.sources.base import AudioSink, BlockAssembler, Source, SourceConfigBase
from edge_ser.types import SAMPLE_RATE

log = logging.getLogger(__name__)

_DTYPES = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
READ_BYTES = 65536


class StdinSourceConfig(SourceConfigBase):
    """Raw interleaved PCM on standard input, delivered as the stream ``id``."""

    type: Literal["stdin"] = Field("stdin", description="Source kind: raw PCM on standard input.")
    format: Literal["s16le", "f32le"] = Field("s16le", description="Sample format: signed 16-bit or 32-bit "
                                                                   "float, little-endian, interleaved.")
    sample_rate: int = Field(SAMPLE_RATE, ge=4000, le=384000, description="Input sample rate (Hz).")
    channels: int = Field(1, ge=1, le=32, description="Interleaved channels (averaged to mono).")
    block_s: float = Field(0.1, ge=0.01, le=2.0, description="Seconds of audio per delivered block.")


class _Reader:
    """Non-blocking reads from a binary file object: through the event loop if it can poll it, else a thread."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.BaseTransport | None = None

    async def open(self) -> None:
        fd = self._stream.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return  # regular files cannot be polled; reads in a thread never block for long
        dup = os.fdopen(os.dup(fd), "rb", buffering=0)
        reader = asyncio.StreamReader(limit=READ_BYTES)
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), dup)
        except (OSError, ValueError) as exc:  # e.g. /dev/null cannot be polled
            log.debug("stdin cannot be polled (%s); reading it in a thread", exc)
            dup.close()
            return
        self._reader = reader

    async def read(self) -> bytes:
        if self._reader is not None:
            return await self._reader.read(READ_BYTES)
        return await asyncio.to_thread(self._stream.read, READ_BYTES)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class StdinSource(Source):
    """Reads ``config.format`` PCM from ``stream`` (default: the process's standard input) until EOF."""

    def __init__(self, config: StdinSourceConfig, stream: BinaryIO | None = None) -> None:
        self.config = config
        self._stream = stream

    async def run(self, sink: AudioSink) -> None:
        cfg = self.config
        stream = self._stream if self._stream is not None else sys.stdin.buffer
        reader = _Reader(stream)
        try:
            await reader.open()
        except OSError as exc:
            log.error("stdin source %s: cannot read standard input: %s", cfg.id, exc)
            await sink.stream_ended(cfg.id, f"cannot read standard input: {exc}", True)
            return
        description = f"stdin {cfg.format} {cfg.sample_rate} Hz {cfg.channels} ch"
        await sink.stream_started(cfg.id, {"source": "stdin", "description": description, "format": cfg.format,
                                           "sample_rate": cfg.sample_rate, "channels": cfg.channels})
        try:
            reason, error = await self._pump(reader, sink)
        except Exception as exc:  # a stream's failure is reported, never raised
            log.exception("stdin source %s failed", cfg.id)
            reason, error = f"stdin read failed: {exc!r}", True
        finally:
            reader.close()
        (log.warning if error else log.info)("stdin source %s: %s", cfg.id, reason)
        await sink.stream_ended(cfg.id, reason, error)

    async def _pump(self, reader: _Reader, sink: AudioSink) -> tuple[str, bool]:
        cfg = self.config
        dtype = _DTYPES[cfg.format]
        frame_bytes = dtype.itemsize * cfg.channels
        resampler = MonoResampler(cfg.sample_rate)
        assembler = BlockAssembler(cfg.id, round(cfg.block_s * SAMPLE_RATE))
        rest = b""
        total = 0
        while True:
            data = await reader.read()
            last = not data
            data = rest + data
            usable = len(data) // frame_bytes * frame_bytes
            rest = data[usable:]
            frames = np.frombuffer(data[:usable], dtype=dtype).reshape(-1, cfg.channels)
            total += frames.shape[0]
            if frames.dtype.kind == "f":
                try:
                    check_finite(frames, f"stdin stream {cfg.id}")
                except AudioError as exc:
                    return str(exc), True
            blocks = assembler.push(resampler.process(downmix(frames), last=last))
            if last:
                blocks += assembler.flush()
            for block in blocks:
                await sink.audio(block)
            if last:
                break
        if rest:
            log.warning("stdin source %s: %d trailing byte(s) do not form a whole frame of %d bytes; dropped",
                        cfg.id, len(rest), frame_bytes)
        return f"end of input after {total / cfg.sample_rate:.2f} s", False
