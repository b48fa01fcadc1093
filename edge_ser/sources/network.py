"""A TCP server that a telephony switch pushes calls into: one stream per connection.

Protocol (one connection = one call):

1. The client sends one handshake line, JSON + ``\\n``, at most 4 KiB::

       {"stream_id": "call-42", "encoding": "mulaw", "sample_rate": 8000}

   ``encoding`` is ``mulaw``, ``alaw`` or ``pcm_s16le``; ``sample_rate`` is 8000 or 16000.
2. The server answers one JSON line: ``{"ok": true, "stream_id": ...}``, or ``{"ok": false, "error": ...}``
   and closes (malformed, oversized or unknown values, a stream id already live, the server full).
3. The client sends raw audio bytes until EOF (the call ends normally). A connection silent for
   ``idle_timeout_s`` is closed and its stream ended with an error.

Connections are isolated: whatever one does (garbage, stalls, resets), the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_ser.audio import MonoResampler
from edge_ser.sources.base import AudioSink, BlockAssembler, Source, SourceConfigBase, SourceError, StreamId
from edge_ser.sources.codecs import decode_alaw, decode_mulaw, decode_s16le
from edge_ser.types import SAMPLE_RATE

log = logging.getLogger(__name__)

HANDSHAKE_MAX_BYTES = 4096
"""Longest accepted handshake line, newline included."""

READ_BYTES = 16384
REFUSE_LINGER_S = 1.0  # how long a refused client may go on sending before the connection is closed
REFUSE_DISCARD_BYTES = 1 << 20

_DECODERS: dict[str, tuple[Callable[[bytes], np.ndarray], int]] = {
    "mulaw": (decode_mulaw, 1),
    "alaw": (decode_alaw, 1),
    "pcm_s16le": (decode_s16le, 2),
}


class NetworkSourceConfig(SourceConfigBase):
    """A TCP server accepting calls (handshake line + raw G.711 / s16le audio), one stream per connection."""

    type: Literal["network"] = Field("network", description="Source kind: TCP server for pushed calls.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(7070, ge=0, le=65535, description="TCP port to listen on (0: any free port).")
    max_connections: int = Field(32, ge=1, le=4096, description="Connections served at once; more are "
                                                                "refused with an error reply.")
    idle_timeout_s: float = Field(10.0, gt=0, le=3600, description="Close a call that sends no bytes for "
                                                                   "this long (reported as an error).")
    handshake_timeout_s: float = Field(5.0, gt=0, le=300, description="Time a client has to send its "
                                                                      "handshake line.")
    block_s: float = Field(0.1, ge=0.01, le=2.0, description="Seconds of audio per delivered block.")


class Handshake(BaseModel):
    """The first line of a call."""

    model_config = ConfigDict(extra="forbid")
    stream_id: StreamId = Field(description="The call's stream id (unique among live calls).")
    encoding: Literal["mulaw", "alaw", "pcm_s16le"] = Field(description="How the audio bytes are encoded.")
    sample_rate: Literal[8000, 16000] = Field(description="Sample rate of the audio bytes (Hz).")


class HandshakeError(ValueError):
    """The handshake was refused; the message is sent to the client."""


def parse_handshake(line: bytes) -> Handshake:
    """Validate one handshake line; raise ``HandshakeError`` with a one-line explanation."""
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HandshakeError(f"handshake is not a JSON object line: {exc}") from exc
    if not isinstance(data, dict):
        raise HandshakeError(f"handshake must be a JSON object, got {type(data).__name__}")
    try:
        return Handshake.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'handshake'}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors(include_url=False))
        raise HandshakeError(f"invalid handshake: {problems}") from exc


class NetworkSource(Source):
    """Serves ``config.host:config.port`` until cancelled; each accepted call is a stream in the sink."""

    def __init__(self, config: NetworkSourceConfig) -> None:
        self.config = config
        self.address: tuple[str, int] | None = None
        self._serving = asyncio.Event()
        self._connections: set[asyncio.Task[Any]] = set()
        self._live: set[str] = set()
        self._stats = {"connections": 0, "refused": 0, "calls": 0, "calls_failed": 0, "idle_closed": 0}

    def stats(self) -> dict[str, int]:
        return {**self._stats, "live": len(self._live)}

    async def wait_serving(self) -> tuple[str, int]:
        """Wait until the server listens; return the bound (host, port) (useful with ``port: 0``)."""
        await self._serving.wait()
        assert self.address is not None
        return self.address

    async def run(self, sink: AudioSink) -> None:
        cfg = self.config
        try:
            server = await asyncio.start_server(lambda r, w: self._handle(r, w, sink), cfg.host, cfg.port,
                                                limit=HANDSHAKE_MAX_BYTES)
        except OSError as exc:
            raise SourceError(f"network source {cfg.id}: cannot listen on {cfg.host}:{cfg.port}: {exc}") from exc
        self.address = server.sockets[0].getsockname()[:2]
        log.info("network source %s listening on %s:%d", cfg.id, *self.address)
        self._serving.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            server.close()
            connections = list(self._connections)
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sink: AudioSink) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._stats["connections"] += 1
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            try:
                if len(self._connections) > self.config.max_connections:
                    raise HandshakeError(f"server full: max_connections={self.config.max_connections}")
                hello = await self._read_handshake(reader)
                if hello.stream_id in self._live:
                    raise HandshakeError(f"stream id {hello.stream_id!r} is already live")
            except HandshakeError as exc:
                self._stats["refused"] += 1
                log.warning("network source %s: refused %s: %s", self.config.id, peer_s, exc)
                await _refuse(reader, writer, str(exc))
                return
            self._live.add(hello.stream_id)
            try:
                await self._serve_call(hello, peer_s, reader, writer, sink)
            finally:
                self._live.discard(hello.stream_id)
        except asyncio.CancelledError:
            # run() is stopping. This is the connection task's top level: asyncio (3.11) would log a cancelled
            # client_connected_cb task as an error, so it ends quietly (run() awaits it).
            log.debug("network source %s: connection from %s closed: source stopping", self.config.id, peer_s)
        finally:
            self._connections.discard(task)
            await _close(writer)

    async def _read_handshake(self, reader: asyncio.StreamReader) -> Handshake:
        try:
            async with asyncio.timeout(self.config.handshake_timeout_s):
                line = await reader.readuntil(b"\n")
        except TimeoutError as exc:
            raise HandshakeError(f"no handshake line within {self.config.handshake_timeout_s:g} s") from exc
        except asyncio.LimitOverrunError as exc:
            raise HandshakeError(f"handshake line longer than {HANDSHAKE_MAX_BYTES} bytes") from exc
        except asyncio.IncompleteReadError as exc:
            raise HandshakeError(f"connection closed before the handshake line ended "
                                 f"({len(exc.partial)} bytes)") from exc
        except ConnectionError as exc:
            raise HandshakeError(f"connection failed during the handshake: {exc}") from exc
        return parse_handshake(line)

    async def _serve_call(self, hello: Handshake, peer: str, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, sink: AudioSink) -> None:
        cfg = self.config
        sid = hello.stream_id
        description = f"call from {peer} ({hello.encoding} {hello.sample_rate} Hz)"
        try:
            await sink.stream_started(sid, {"source": "network", "source_id": cfg.id,
                                            "description": description, "peer": peer,
                                            "encoding": hello.encoding, "sample_rate": hello.sample_rate})
        except Exception as exc:  # e.g. another source already uses this stream id
            self._stats["refused"] += 1
            log.warning("network source %s: the pipeline refused call %s: %s", cfg.id, sid, exc)
            await _refuse(reader, writer, f"stream {sid!r} refused: {exc}")
            return
        self._stats["calls"] += 1
        await _reply(writer, {"ok": True, "stream_id": sid})
        try:
            reason, error = await self._pump(hello, reader, sink)
        except Exception as exc:  # one call's failure never affects the others
            log.exception("network source %s: call %s failed", cfg.id, sid)
            reason, error = f"call failed: {exc!r}", True
        if error:
            self._stats["calls_failed"] += 1
            await _reply(writer, {"ok": False, "error": reason})
        (log.warning if error else log.info)("network source %s: call %s ended: %s", cfg.id, sid, reason)
        await sink.stream_ended(sid, reason, error)

    async def _pump(self, hello: Handshake, reader: asyncio.StreamReader, sink: AudioSink) -> tuple[str, bool]:
        """Decode the call's bytes into the sink until EOF or failure; what arrived is always delivered."""
        cfg = self.config
        decode, width = _DECODERS[hello.encoding]
        resampler = MonoResampler(hello.sample_rate)
        assembler = BlockAssembler(hello.stream_id, round(cfg.block_s * SAMPLE_RATE))
        rest = b""
        received = 0
        failure: str | None = None
        while failure is None:
            try:
                async with asyncio.timeout(cfg.idle_timeout_s):  # (wait_for can swallow a cancel in 3.11)
                    data = await reader.read(READ_BYTES)
            except TimeoutError:
                self._stats["idle_closed"] += 1
                failure, data = f"idle: no audio for {cfg.idle_timeout_s:g} s (after {received} bytes)", b""
            except ConnectionError as exc:
                failure, data = f"connection lost after {received} bytes: {exc}", b""
            received += len(data)
            last = not data
            data = rest + data
            usable = len(data) // width * width
            rest = data[usable:]
            blocks = assembler.push(resampler.process(decode(data[:usable]), last=last))
            if last:
                blocks += assembler.flush()
            for block in blocks:
                await sink.audio(block)
            if last and failure is None:
                seconds = assembler.samples_out / SAMPLE_RATE
                return f"end of call after {seconds:.2f} s ({received} bytes)", False
        return failure, True


async def _reply(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """Send one JSON line to the client, best effort (it may be gone already)."""
    with contextlib.suppress(ConnectionError, OSError, TimeoutError, RuntimeError):
        writer.write(json.dumps(message).encode() + b"\n")
        async with asyncio.timeout(1.0):
            await writer.drain()


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: str) -> None:
    """Send the error line and EOF, then discard what the client still sends (briefly, boundedly): closing
    with unread input makes the kernel reset the connection, which can destroy the reply before it is read."""
    await _reply(writer, {"ok": False, "error": error})
    with contextlib.suppress(ConnectionError, OSError, TimeoutError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        discarded = 0
        async with asyncio.timeout(REFUSE_LINGER_S):
            while discarded < REFUSE_DISCARD_BYTES and (data := await reader.read(READ_BYTES)):
                discarded += len(data)


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, TimeoutError, RuntimeError):
        writer.close()
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
