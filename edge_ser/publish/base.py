"""The ``Publisher`` interface, the message type every backend accepts, and the encoding they share.

A backend turns an :class:`OutboundMessage` (kind, stream id, JSON-able payload) into a topic and bytes with
:class:`MessageEncoder`, then delivers it its own way (MQTT through an on-disk spool, or JSON lines).
``publish()`` is called from the asyncio pipeline: it must never block and never raise because the broker
is unreachable. It does raise ``ValueError`` for caller mistakes (unknown kind, bad stream id, a payload
that is not JSON), so those show up at once instead of in the broker log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from edge_ser.publish.topics import KINDS, STREAM_KINDS, topic_for

AVAILABILITY_ONLINE = "online"
AVAILABILITY_OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message for a publisher. The caller builds the payload (schema_version, ids, times)."""

    kind: str  # "state" | "event" | "segment" | "stats" | "availability" | "stream_status"
    stream_id: str | None  # None for device-level topics (availability, stats)
    payload: dict = field(hash=False)  # JSON-serializable
    retain: bool = False
    qos: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"OutboundMessage.kind {self.kind!r} is unknown; expected one of {', '.join(KINDS)}")
        if (self.kind in STREAM_KINDS) != (self.stream_id is not None):
            expected = "a stream id" if self.kind in STREAM_KINDS else "None (device-level topic)"
            raise ValueError(f"OutboundMessage.stream_id is {self.stream_id!r} for kind {self.kind!r}; "
                             f"expected {expected}")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"OutboundMessage.qos is {self.qos!r}; expected 0, 1 or 2")
        if not isinstance(self.payload, dict):
            raise ValueError(f"OutboundMessage.payload must be a dict, got {type(self.payload).__name__}")


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """A message ready for the wire: its topic and UTF-8 JSON bytes."""

    kind: str
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class MessageEncoder:
    """Builds topics (validated once per kind and stream, then cached) and compact JSON payloads."""

    def __init__(self, prefix: str, device_id: str) -> None:
        self.prefix = prefix
        self.device_id = device_id
        topic_for(prefix, device_id, "availability", None)  # validate prefix and device id now
        self._topics: dict[tuple[str, str | None], str] = {}

    def topic(self, kind: str, stream_id: str | None) -> str:
        key = (kind, stream_id)
        topic = self._topics.get(key)
        if topic is None:
            topic = topic_for(self.prefix, self.device_id, kind, stream_id)
            if len(self._topics) < 4096:  # streams come and go; do not grow without bound
                self._topics[key] = topic
        return topic

    def encode(self, msg: OutboundMessage) -> EncodedMessage:
        """Topic and JSON bytes for ``msg``; ``ValueError`` if the payload is not strict JSON."""
        try:
            data = json.dumps(msg.payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"payload of {msg.kind!r} message for stream {msg.stream_id!r} is not "
                             f"JSON-serializable: {err}") from err
        return EncodedMessage(msg.kind, self.topic(msg.kind, msg.stream_id), data.encode("utf-8"),
                              msg.qos, msg.retain)


def check_caller_kind(msg: OutboundMessage) -> None:
    """Publishers own the device availability topic; callers use 'stream_status' for per-stream status."""
    if msg.kind == "availability":
        raise ValueError("OutboundMessage kind 'availability' is published by the publisher itself "
                         "(online on start, offline as last will and on close); use 'stream_status' "
                         "for per-stream status")


class Publisher(ABC):
    """Delivers pipeline output (states, events, segments, stats) to consumers."""

    @abstractmethod
    async def start(self) -> None:
        """Begin delivering. Never fails because a broker is down (it keeps retrying in the background)."""

    @abstractmethod
    def publish(self, msg: OutboundMessage) -> None:
        """Accept ``msg`` for delivery. Never blocks the event loop, never raises for broker trouble."""

    @abstractmethod
    async def drain(self, timeout: float) -> bool:
        """Wait until everything accepted so far is delivered (or dropped); False on timeout."""

    @abstractmethod
    async def close(self, timeout: float) -> None:
        """Drain for at most ``timeout`` seconds, publish availability "offline", disconnect."""

    @abstractmethod
    def stats(self) -> dict[str, int | float]:
        """Counters: queued, delivered, dropped_states, dropped_events, reconnects, spool_bytes, ..."""


def resolve_threadsafe(fut: asyncio.Future[bool], loop: asyncio.AbstractEventLoop, value: bool) -> None:
    """Set ``fut``'s result from another thread (no-op if it is already done or its loop has closed)."""

    def setter() -> None:
        if not fut.done():
            fut.set_result(value)

    with contextlib.suppress(RuntimeError):  # the event loop is closed
        loop.call_soon_threadsafe(setter)
