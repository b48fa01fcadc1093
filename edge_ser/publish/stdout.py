"""Stdout / file publisher: one JSON object per line, ``{"topic": ..., "retain": ..., "payload": ...}``.

Useful for debugging, piping into other tools (``edge-ser run | jq``) and tests. Lines use the same topics as
MQTT. A writer thread does the I/O so ``publish()`` never blocks the event loop; if the writer falls more
than ``max_queue`` lines behind (a stalled pipe), new lines are dropped and counted. The first line is the
availability "online", the last one (on ``close()``) "offline".
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from collections import deque
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_ser.publish.base import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
    EncodedMessage,
    MessageEncoder,
    OutboundMessage,
    Publisher,
    check_caller_kind,
    resolve_threadsafe,
)
from edge_ser.publish.spool import DROP_FIRST_KINDS
from edge_ser.publish.topics import validate_id, validate_prefix

logger = logging.getLogger(__name__)


class StdoutPublisherConfig(BaseModel):
    """Write messages as JSON lines to stdout or a file (``type: stdout``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["stdout"] = Field("stdout", description="Publisher backend: JSON lines on stdout or a file.")
    path: Path | None = Field(None, description="File to append the lines to; None: standard output.")
    prefix: str = Field("edge-ser", description="Topic prefix written in each line's 'topic'.")
    device_id: str | None = Field(None, description="Device id used in topics; None: the agent's device id.")
    max_queue: int = Field(10_000, ge=1, description="Lines waiting for the writer before new ones are dropped.")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return validate_prefix(value)

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_id(value, "device_id")


def jsonl_line(message: EncodedMessage) -> str:
    """The JSON line for an encoded message (the payload bytes are already JSON)."""
    return (f'{{"topic":{json.dumps(message.topic, ensure_ascii=False)},'
            f'"retain":{"true" if message.retain else "false"},'
            f'"payload":{message.payload.decode("utf-8")}}}\n')


class StdoutPublisher(Publisher):
    """``Publisher`` writing JSON lines from a background thread."""

    def __init__(self, config: StdoutPublisherConfig, device_id: str) -> None:
        self._config = config
        device = config.device_id or device_id
        self._encoder = MessageEncoder(config.prefix, device)
        self._availability = self._encoder.topic("availability", None)
        self._cond = threading.Condition()
        self._items: deque[EncodedMessage | tuple[asyncio.Future[bool], asyncio.AbstractEventLoop]] = deque()
        self._pending = 0  # messages in _items (drain markers excluded)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._out: IO[str] | None = None
        self._closed = False
        self._broken = False
        self._counts = {"delivered": 0, "dropped_states": 0, "dropped_events": 0}

    async def start(self) -> None:
        if self._thread is not None:
            return
        if self._config.path is None:
            self._out = sys.stdout
        else:
            try:
                self._out = open(self._config.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            except OSError as err:
                raise ValueError(f"stdout.path: cannot open {str(self._config.path)!r} for appending: "
                                 f"{err.strerror or err}") from err
        logger.info("stdout publisher writing JSON lines to %s", self._config.path or "standard output")
        self._thread = threading.Thread(target=self._run_writer, name="edge-ser-jsonl-writer", daemon=True)
        self._thread.start()
        self._enqueue(self._availability_message(AVAILABILITY_ONLINE))

    def publish(self, msg: OutboundMessage) -> None:
        check_caller_kind(msg)
        encoded = self._encoder.encode(msg)
        if self._closed:
            logger.debug("stdout publisher closed; dropped %s message for %s", msg.kind, encoded.topic)
            return
        self._enqueue(encoded)

    async def drain(self, timeout: float) -> bool:
        if self._thread is None:
            return self._pending == 0
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        with self._cond:
            self._items.append((done, loop))
            self._cond.notify()
        try:
            return await asyncio.wait_for(done, timeout)
        except TimeoutError:
            return False

    async def close(self, timeout: float) -> None:
        if self._closed or self._thread is None:
            self._closed = True
            return
        self._closed = True
        self._enqueue(self._availability_message(AVAILABILITY_OFFLINE), force=True)
        await self.drain(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join, timeout)
        if self._out is not None and self._out is not sys.stdout:
            self._out.close()

    def stats(self) -> dict[str, int | float]:
        with self._cond:
            return {"queued": self._pending, **self._counts, "reconnects": 0, "spool_bytes": 0}

    def _availability_message(self, status: str) -> EncodedMessage:
        return EncodedMessage("availability", self._availability, json.dumps(status).encode(), 1, True)

    def _enqueue(self, message: EncodedMessage, force: bool = False) -> None:
        with self._cond:
            if self._pending >= self._config.max_queue and not force:
                key = "dropped_states" if message.kind in DROP_FIRST_KINDS else "dropped_events"
                self._counts[key] += 1
                if self._counts[key] == 1 or self._counts[key] % 1000 == 0:
                    logger.warning("stdout publisher: writer %d lines behind; dropped %d %s so far",
                                   self._pending, self._counts[key], key.removeprefix("dropped_"))
                return
            self._items.append(message)
            self._pending += 1
            self._cond.notify()

    def _run_writer(self) -> None:
        out = self._out
        assert out is not None
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if not self._items and self._stopping:
                    return
                batch, self._items = self._items, deque()
            written = 0
            drains = []
            for item in batch:
                if isinstance(item, EncodedMessage):
                    written += self._write(out, item)
                else:
                    drains.append(item)
            self._flush(out)
            with self._cond:
                self._pending -= sum(isinstance(i, EncodedMessage) for i in batch)
                self._counts["delivered"] += written
            for fut, loop in drains:  # after the counts, so stats() agrees with a finished drain()
                resolve_threadsafe(fut, loop, True)

    def _write(self, out: IO[str], message: EncodedMessage) -> int:
        if self._broken:
            return 0
        try:
            out.write(jsonl_line(message))
        except (OSError, ValueError) as err:  # broken pipe, closed file
            self._broken = True
            logger.error("stdout publisher: cannot write to %s (%s); dropping further lines",
                         self._config.path or "standard output", err)
            return 0
        return 1

    def _flush(self, out: IO[str]) -> None:
        if self._broken:
            return
        try:
            out.flush()
        except (OSError, ValueError) as err:
            self._broken = True
            logger.error("stdout publisher: cannot flush %s (%s)", self._config.path or "standard output", err)
