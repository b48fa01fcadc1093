"""Publishing pipeline output: the ``Publisher`` interface and its MQTT and stdout (JSON lines) backends.

Pick a backend with the ``type`` field of :data:`PublisherConfig` and build it with :func:`make_publisher`.
Topic layout and payload reference: docs/mqtt.md.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from edge_ser.publish.base import OutboundMessage, Publisher
from edge_ser.publish.mqtt import MqttPublisherConfig, MqttTlsConfig, SpoolConfig
from edge_ser.publish.stdout import StdoutPublisherConfig
from edge_ser.publish.topics import (
    availability_topic,
    event_topic,
    segment_topic,
    state_topic,
    stats_topic,
    stream_status_topic,
    topic_for,
    validate_id,
    validate_prefix,
)

PublisherConfig = Annotated[MqttPublisherConfig | StdoutPublisherConfig, Field(discriminator="type")]
"""Publisher settings; the ``type`` field ("mqtt" or "stdout") picks the backend."""


def make_publisher(config: MqttPublisherConfig | StdoutPublisherConfig, device_id: str) -> Publisher:
    """The publisher for ``config``. ``device_id`` is used in topics unless the config sets its own."""
    validate_id(device_id, "device_id")
    if isinstance(config, MqttPublisherConfig):
        from edge_ser.publish.mqtt import MqttPublisher

        return MqttPublisher(config, device_id)
    if isinstance(config, StdoutPublisherConfig):
        from edge_ser.publish.stdout import StdoutPublisher

        return StdoutPublisher(config, device_id)
    raise ValueError(f"publisher config of type {type(config).__name__} is unknown; "
                     "expected MqttPublisherConfig or StdoutPublisherConfig")


__all__ = [
    "MqttPublisherConfig",
    "MqttTlsConfig",
    "OutboundMessage",
    "Publisher",
    "PublisherConfig",
    "SpoolConfig",
    "StdoutPublisherConfig",
    "availability_topic",
    "event_topic",
    "make_publisher",
    "segment_topic",
    "state_topic",
    "stats_topic",
    "stream_status_topic",
    "topic_for",
    "validate_id",
    "validate_prefix",
]
