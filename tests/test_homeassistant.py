"""Home Assistant MQTT discovery through a real mosquitto: the retained entity configs arrive ahead of the
stream's status, once per stream and run, and their templates (rendered with Jinja2, as Home Assistant does)
turn real state / shift / status payloads into the sensor values, the event and the availability."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from broker import Mosquitto, Subscriber

from edge_ser.events import EventBuilder
from edge_ser.publish import MqttPublisherConfig, OutboundMessage, SpoolConfig, make_publisher
from edge_ser.publish.homeassistant import HomeAssistantConfig, discovery_messages, object_id
from edge_ser.smoothing import Shift, StateUpdate
from edge_ser.types import EMOTIONS

jinja2 = pytest.importorskip("jinja2", reason="Jinja2 renders the templates as Home Assistant would")

DEVICE = "kiosk-3"
STREAM = "lobby mic.1"  # spaces and dots: not allowed in discovery topic levels, so they become '_'


def _render(template: str, payload: dict) -> str:
    return jinja2.Environment().from_string(template).render(value_json=payload)


def _payloads() -> dict[str, dict]:
    builder = EventBuilder(DEVICE, STREAM, "edge-ser-default-v1", "r1")
    probs = np.array([0.1, 0.05, 0.7, 0.05, 0.04, 0.03, 0.02, 0.01], np.float32)
    return {
        "online": builder.stream_status("online", 0.0, 1.7e9),
        "state": builder.state(StateUpdate(3.0, probs, "sad", 0.7), 1.7e9 + 3, window_end=3.0),
        "shift": builder.shift(Shift(3.0, "neutral", "sad", 0.7, onset=2.1), 1.7e9 + 3),
        "ended": builder.stream_status("ended", 9.0, 1.7e9 + 9, "end of file"),
    }


def test_discovery_is_announced_once_per_stream_before_its_status(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto, "#").start()
    payloads = _payloads()

    async def scenario() -> None:
        cfg = MqttPublisherConfig(host=mosquitto.host, port=mosquitto.port, prefix="site/edge-ser",
                                  spool=SpoolConfig(path=tmp_path / "spool.sqlite3"),
                                  home_assistant=HomeAssistantConfig(enabled=True))
        pub = make_publisher(cfg, DEVICE)
        await pub.start()
        pub.publish(OutboundMessage("stream_status", STREAM, payloads["online"], retain=True))
        pub.publish(OutboundMessage("state", STREAM, payloads["state"], retain=True))
        pub.publish(OutboundMessage("stream_status", STREAM, payloads["online"], retain=True))  # not again
        assert await pub.drain(10.0)
        await pub.close(5.0)

    try:
        asyncio.run(scenario())
        assert sub.wait_for(lambda msgs: sum(m.topic.endswith("/state") for m in msgs) >= 1, 10)
    finally:
        sub.stop()
    topics = [m.topic for m in sub.received()]
    node, stream = object_id(DEVICE), object_id(STREAM)
    expected = [f"homeassistant/sensor/{node}/{stream}_emotion/config",
                f"homeassistant/sensor/{node}/{stream}_confidence/config",
                f"homeassistant/event/{node}/{stream}_shift/config"]
    assert stream == "lobby_mic_1"
    assert [t for t in topics if t.startswith("homeassistant/")] == expected
    status_at = topics.index(f"site/edge-ser/{DEVICE}/{STREAM}/status")
    assert all(topics.index(t) < status_at for t in expected), "entities must exist before their status"

    late = Subscriber(mosquitto, "homeassistant/#").start()  # Home Assistant restarting later: retained
    try:
        assert late.wait_for(lambda msgs: len(msgs) >= 3, 10)
    finally:
        late.stop()
    assert all(m.retain for m in late.received())


def test_templates_turn_real_payloads_into_entity_values() -> None:
    payloads = _payloads()
    configs = {m.topic.rsplit("/", 2)[1].rsplit("_", 1)[1]: json.loads(m.payload)
               for m in discovery_messages(HomeAssistantConfig(enabled=True), "edge-ser", DEVICE, STREAM, "m1")}
    emotion, confidence, shift = configs["emotion"], configs["confidence"], configs["shift"]
    assert emotion["state_topic"] == f"edge-ser/{DEVICE}/{STREAM}/state" == confidence["state_topic"]
    assert shift["state_topic"] == f"edge-ser/{DEVICE}/{STREAM}/event"
    assert _render(emotion["value_template"], payloads["state"]) == "sad"
    assert json.loads(_render(emotion["json_attributes_template"], payloads["state"]))["sad"] == 0.7
    assert float(_render(confidence["value_template"], payloads["state"])) == 70.0
    event = json.loads(_render(shift["value_template"], payloads["shift"]))
    assert event["event_type"] == "sad" and event["from"] == "neutral" and event["onset"] == 2.1
    assert set(shift["event_types"]) == {*EMOTIONS, "uncertain"}
    for entity in configs.values():
        device_avail, stream_avail = entity["availability"]
        assert device_avail == {"topic": f"edge-ser/{DEVICE}/availability"} and entity["availability_mode"] == "all"
        assert _render(stream_avail["value_template"], payloads["online"]) == "online"
        assert _render(stream_avail["value_template"], payloads["ended"]) == "offline"
        assert entity["device"]["identifiers"] == [f"edge_ser_{object_id(DEVICE)}"]
    assert len({c["unique_id"] for c in configs.values()}) == 3
