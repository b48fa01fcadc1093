"""MQTT topic layout: one function per topic, and validation of the ids that become topic levels.

Layout under a configurable prefix (which may span several levels, e.g. ``site-3/edge-ser``)::

    <prefix>/<device>/availability          retained "online" / "offline" (the last will)
    <prefix>/<device>/stats                 periodic agent statistics
    <prefix>/<device>/<stream>/state        retained current emotion state of a stream
    <prefix>/<device>/<stream>/event        emotion shift events (QoS 1)
    <prefix>/<device>/<stream>/segment      speech start / end (QoS 1)
    <prefix>/<device>/<stream>/status       retained per-stream availability / status

Device and stream ids become single topic levels, so they must not contain MQTT wildcards (``+``, ``#``),
the level separator ``/`` or NUL, must not be empty and are capped at :data:`MAX_ID_LENGTH` characters.
"""

from __future__ import annotations

MAX_ID_LENGTH = 64
"""Longest device or stream id accepted as a topic level (characters)."""

MAX_PREFIX_LENGTH = 256
"""Longest topic prefix accepted (characters)."""

KINDS: tuple[str, ...] = ("state", "event", "segment", "stats", "availability", "stream_status")
"""Every message kind a publisher knows how to route."""

STREAM_KINDS: frozenset[str] = frozenset({"state", "event", "segment", "stream_status"})
"""Kinds that belong to one stream (need a stream id); the others are device-level."""

_FORBIDDEN = {"+": "'+' (MQTT single-level wildcard)", "#": "'#' (MQTT multi-level wildcard)",
              "/": "'/' (MQTT level separator)", "\x00": "NUL"}


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is usable as one topic level, else raise ``ValueError`` naming ``what``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} {value[:20]!r}... is {len(value)} characters long; "
                         f"expected at most {MAX_ID_LENGTH}")
    for char, name in _FORBIDDEN.items():
        if char in value:
            raise ValueError(f"{what} {value!r} contains {name}; expected a single MQTT topic level "
                             "without '+', '#', '/' or NUL")
    return value


def validate_prefix(value: str) -> str:
    """Return ``value`` if it is a usable topic prefix (one or more levels), else raise ``ValueError``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"topic prefix must be a non-empty string, got {value!r}")
    if len(value) > MAX_PREFIX_LENGTH:
        raise ValueError(f"topic prefix is {len(value)} characters long; expected at most {MAX_PREFIX_LENGTH}")
    if value.startswith("$"):
        raise ValueError(f"topic prefix {value!r} starts with '$', which MQTT reserves for the broker")
    for level in value.split("/"):
        if not level:
            raise ValueError(f"topic prefix {value!r} has an empty level (leading, trailing or double '/')")
        for char, name in _FORBIDDEN.items():
            if char != "/" and char in level:
                raise ValueError(f"topic prefix {value!r} contains {name}")
    return value


def _device_base(prefix: str, device_id: str) -> str:
    return f"{validate_prefix(prefix)}/{validate_id(device_id, 'device id')}"


def _stream_base(prefix: str, device_id: str, stream_id: str) -> str:
    return f"{_device_base(prefix, device_id)}/{validate_id(stream_id, 'stream id')}"


def availability_topic(prefix: str, device_id: str) -> str:
    """``<prefix>/<device>/availability``: retained "online"/"offline"; "offline" is the last will."""
    return f"{_device_base(prefix, device_id)}/availability"


def stats_topic(prefix: str, device_id: str) -> str:
    """``<prefix>/<device>/stats``: agent statistics."""
    return f"{_device_base(prefix, device_id)}/stats"


def state_topic(prefix: str, device_id: str, stream_id: str) -> str:
    """``<prefix>/<device>/<stream>/state``: retained current state of one stream."""
    return f"{_stream_base(prefix, device_id, stream_id)}/state"


def event_topic(prefix: str, device_id: str, stream_id: str) -> str:
    """``<prefix>/<device>/<stream>/event``: emotion shift events."""
    return f"{_stream_base(prefix, device_id, stream_id)}/event"


def segment_topic(prefix: str, device_id: str, stream_id: str) -> str:
    """``<prefix>/<device>/<stream>/segment``: speech start / end."""
    return f"{_stream_base(prefix, device_id, stream_id)}/segment"


def stream_status_topic(prefix: str, device_id: str, stream_id: str) -> str:
    """``<prefix>/<device>/<stream>/status``: retained per-stream availability / status."""
    return f"{_stream_base(prefix, device_id, stream_id)}/status"


def topic_for(prefix: str, device_id: str, kind: str, stream_id: str | None) -> str:
    """The topic for a message of ``kind``; raises ``ValueError`` for an unknown kind or a misplaced stream id."""
    if kind not in KINDS:
        raise ValueError(f"message kind {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    if kind in STREAM_KINDS:
        if stream_id is None:
            raise ValueError(f"message kind {kind!r} belongs to a stream, but stream_id is None")
        return {
            "state": state_topic,
            "event": event_topic,
            "segment": segment_topic,
            "stream_status": stream_status_topic,
        }[kind](prefix, device_id, stream_id)
    if stream_id is not None:
        raise ValueError(f"message kind {kind!r} is device-level, but stream_id is {stream_id!r}; expected None")
    if kind == "availability":
        return availability_topic(prefix, device_id)
    return stats_topic(prefix, device_id)
