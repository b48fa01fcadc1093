"""The stdout / file publisher writes one JSON object per line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge_ser.publish import OutboundMessage, StdoutPublisherConfig, make_publisher

MESSAGES = [
    OutboundMessage("segment", "mic0", {"kind": "start", "t": 0.5}),
    OutboundMessage("state", "mic0", {"emotion": "neutral", "p": 0.8}, retain=True),
    OutboundMessage("event", "mic0", {"event_id": "e1", "from": "neutral", "to": "angry"}),
    OutboundMessage("stream_status", "mic0", {"status": "live"}, retain=True),
    OutboundMessage("stats", None, {"windows": 12, "note": "ünïcode"}),
]


async def publish_all(config: StdoutPublisherConfig) -> dict[str, int | float]:
    pub = make_publisher(config, "pi-1")
    await pub.start()
    for msg in MESSAGES:
        pub.publish(msg)
    assert await pub.drain(5.0)
    stats = pub.stats()
    await pub.close(5.0)
    return stats


def check_lines(lines: list[str]) -> None:
    records = [json.loads(line) for line in lines]
    assert records[0] == {"topic": "edge-ser/pi-1/availability", "retain": True, "payload": "online"}
    assert records[-1] == {"topic": "edge-ser/pi-1/availability", "retain": True, "payload": "offline"}
    assert records[1:-1] == [
        {"topic": "edge-ser/pi-1/mic0/segment", "retain": False, "payload": {"kind": "start", "t": 0.5}},
        {"topic": "edge-ser/pi-1/mic0/state", "retain": True, "payload": {"emotion": "neutral", "p": 0.8}},
        {"topic": "edge-ser/pi-1/mic0/event", "retain": False,
         "payload": {"event_id": "e1", "from": "neutral", "to": "angry"}},
        {"topic": "edge-ser/pi-1/mic0/status", "retain": True, "payload": {"status": "live"}},
        {"topic": "edge-ser/pi-1/stats", "retain": False, "payload": {"windows": 12, "note": "ünïcode"}},
    ]


def test_jsonl_to_file(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    stats = asyncio.run(publish_all(StdoutPublisherConfig(path=out)))
    check_lines(out.read_text(encoding="utf-8").splitlines())
    assert stats["delivered"] == 1 + len(MESSAGES) and stats["queued"] == 0


def test_jsonl_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(publish_all(StdoutPublisherConfig()))
    check_lines(capsys.readouterr().out.splitlines())


def test_rejects_availability_and_unwritable_path(tmp_path: Path) -> None:
    async def scenario() -> None:
        pub = make_publisher(StdoutPublisherConfig(path=tmp_path / "out.jsonl"), "pi-1")
        with pytest.raises(ValueError, match="published by the publisher itself"):
            pub.publish(OutboundMessage("availability", None, {"status": "online"}))
        bad = make_publisher(StdoutPublisherConfig(path=tmp_path), "pi-1")  # a directory
        with pytest.raises(ValueError, match=r"stdout\.path"):
            await bad.start()

    asyncio.run(scenario())
