"""Topic layout and validation of the ids and prefix that become topic levels."""

from __future__ import annotations

import pytest

from edge_ser.publish import (
    OutboundMessage,
    availability_topic,
    event_topic,
    segment_topic,
    state_topic,
    stats_topic,
    stream_status_topic,
    topic_for,
)
from edge_ser.publish.base import MessageEncoder
from edge_ser.publish.topics import MAX_ID_LENGTH


def test_topic_layout() -> None:
    assert availability_topic("edge-ser", "pi-1") == "edge-ser/pi-1/availability"
    assert stats_topic("edge-ser", "pi-1") == "edge-ser/pi-1/stats"
    assert state_topic("site/3", "pi-1", "mic0") == "site/3/pi-1/mic0/state"
    assert event_topic("edge-ser", "pi-1", "mic0") == "edge-ser/pi-1/mic0/event"
    assert segment_topic("edge-ser", "pi-1", "mic0") == "edge-ser/pi-1/mic0/segment"
    assert stream_status_topic("edge-ser", "pi-1", "mic0") == "edge-ser/pi-1/mic0/status"
    assert topic_for("edge-ser", "pi-1", "stream_status", "call 7") == "edge-ser/pi-1/call 7/status"
    assert topic_for("edge-ser", "pi-1", "stats", None) == "edge-ser/pi-1/stats"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [("a+b", "wildcard"), ("#", "wildcard"), ("mic/0", "separator"), ("mic\x000", "NUL"), ("", "empty"),
     ("x" * (MAX_ID_LENGTH + 1), "characters long")],
)
def test_stream_and_device_ids_are_sanitized(bad: str, reason: str) -> None:
    with pytest.raises(ValueError, match="stream id") as stream_err:
        event_topic("edge-ser", "pi-1", bad)
    assert reason in str(stream_err.value) or reason == "empty"
    with pytest.raises(ValueError, match="device id"):
        state_topic("edge-ser", bad, "mic0")


def test_longest_allowed_id_is_accepted() -> None:
    longest = "s" * MAX_ID_LENGTH
    assert event_topic("edge-ser", "pi-1", longest).endswith(f"/{longest}/event")


@pytest.mark.parametrize("bad", ["", "/edge", "edge/", "a//b", "a/+/b", "a/#", "$SYS/x", "a\x00b"])
def test_prefix_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        availability_topic(bad, "pi-1")


def test_kind_and_stream_id_must_match() -> None:
    with pytest.raises(ValueError, match="unknown"):
        topic_for("edge-ser", "pi-1", "shout", "mic0")
    with pytest.raises(ValueError, match="belongs to a stream"):
        topic_for("edge-ser", "pi-1", "event", None)
    with pytest.raises(ValueError, match="device-level"):
        topic_for("edge-ser", "pi-1", "stats", "mic0")
    with pytest.raises(ValueError, match="stream_id"):
        OutboundMessage("event", None, {})
    with pytest.raises(ValueError, match="qos"):
        OutboundMessage("event", "mic0", {}, qos=3)


def test_encoder_rejects_non_json_payload_and_bad_stream() -> None:
    encoder = MessageEncoder("edge-ser", "pi-1")
    encoded = encoder.encode(OutboundMessage("event", "mic0", {"emotion": "happy", "p": 0.5}))
    assert encoded.topic == "edge-ser/pi-1/mic0/event"
    assert encoded.payload == b'{"emotion":"happy","p":0.5}'
    with pytest.raises(ValueError, match="not JSON-serializable"):
        encoder.encode(OutboundMessage("event", "mic0", {"p": float("nan")}))
    with pytest.raises(ValueError, match="not JSON-serializable"):
        encoder.encode(OutboundMessage("event", "mic0", {"when": object()}))
    with pytest.raises(ValueError, match="wildcard"):
        encoder.encode(OutboundMessage("event", "mic+0", {}))
