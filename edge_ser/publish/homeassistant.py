"""Home Assistant MQTT discovery: per stream, a sensor for the dominant emotion, a sensor for its confidence
and an event entity for emotion shifts, all tied to the agent's availability and the stream's status.

Announced (retained, under ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``) when a stream
comes online, so Home Assistant creates the entities by itself; they read the agent's own topics (the
payloads are not duplicated). Pure: builds messages, sends nothing.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_ser import __version__
from edge_ser.publish.base import EncodedMessage
from edge_ser.publish.topics import (
    availability_topic,
    event_topic,
    state_topic,
    stream_status_topic,
    validate_id,
    validate_prefix,
)
from edge_ser.types import EMOTIONS

DISCOVERY_KIND = "discovery"
"""Spool / encoder kind of discovery messages (latest-value: re-announced whenever the stream restarts)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# Home Assistant renders these Jinja templates against each payload (schema v1, edge_ser.events).
_STREAM_AVAILABLE = "{{ 'online' if value_json.status in ['online', 'degraded'] else 'offline' }}"
_SHIFT_EVENT = ("{{ {'event_type': value_json.to, 'from': value_json['from'], 'confidence': value_json.confidence, "
                "'onset': value_json.onset, 't': value_json.t} | tojson }}")


class HomeAssistantConfig(BaseModel):
    """Home Assistant MQTT discovery (``publisher.home_assistant``; MQTT publisher only)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Announce each stream's entities to Home Assistant.")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix (its MQTT "
                                                               "integration setting; the broker ACL must let "
                                                               "the agent publish there).")
    node_id: str | None = Field(None, description="Node id in discovery topics; None: the device id. Characters "
                                                  "outside [A-Za-z0-9_-] become '_'.")

    @field_validator("discovery_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return validate_prefix(value)

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_id(value, "home_assistant.node_id")


def object_id(value: str) -> str:
    """``value`` made safe for a discovery topic level and a unique id ([A-Za-z0-9_-])."""
    return _UNSAFE.sub("_", value)


def discovery_messages(config: HomeAssistantConfig, prefix: str, device_id: str, stream_id: str,
                       model_id: str) -> list[EncodedMessage]:
    """The retained discovery configs for one stream's three entities."""
    node = object_id(config.node_id or device_id)
    stream = object_id(stream_id)
    state = state_topic(prefix, device_id, stream_id)
    availability = [
        {"topic": availability_topic(prefix, device_id)},
        {"topic": stream_status_topic(prefix, device_id, stream_id), "value_template": _STREAM_AVAILABLE},
    ]
    common = {
        "availability": availability,
        "availability_mode": "all",
        "device": {"identifiers": [f"edge_ser_{node}"], "name": f"edge-ser {device_id}", "manufacturer": "edge-ser",
                   "model": model_id, "sw_version": __version__},
        "origin": {"name": "edge-ser", "sw_version": __version__},
    }
    entities = {
        ("sensor", "emotion"): {
            "name": f"{stream_id} emotion",
            "state_topic": state,
            "value_template": "{{ value_json.dominant }}",
            "json_attributes_topic": state,
            "json_attributes_template": "{{ value_json.probs | tojson }}",
            "icon": "mdi:emoticon-outline",
        },
        ("sensor", "confidence"): {
            "name": f"{stream_id} emotion confidence",
            "state_topic": state,
            "value_template": "{{ (value_json.confidence * 100) | round(1) }}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "icon": "mdi:gauge",
        },
        ("event", "shift"): {
            "name": f"{stream_id} emotion shift",
            "state_topic": event_topic(prefix, device_id, stream_id),
            "event_types": [*EMOTIONS, "uncertain"],
            "value_template": _SHIFT_EVENT,
            "icon": "mdi:swap-horizontal",
        },
    }
    out = []
    for (component, what), entity in entities.items():
        unique = f"edge_ser_{node}_{stream}_{what}"
        payload = {**entity, "unique_id": unique, **common}
        topic = f"{config.discovery_prefix}/{component}/{node}/{stream}_{what}/config"
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        out.append(EncodedMessage(DISCOVERY_KIND, topic, data, qos=1, retain=True))
    return out
