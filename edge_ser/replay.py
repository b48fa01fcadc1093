"""``edge-ser replay``: run the real pipeline over one audio file and collect what it would publish.

A ``RecordingPublisher`` keeps the messages in memory (and can echo them), so the timeline printed and
plotted is exactly what the agent sends over MQTT for the same audio.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from edge_ser.publish import OutboundMessage, Publisher


@dataclass
class RecordingPublisher(Publisher):
    """Keeps every message; optionally prints a readable line per state/shift/segment as it arrives."""

    echo: TextIO | None = None
    messages: list[OutboundMessage] = field(default_factory=list)

    async def start(self) -> None:
        return None

    def publish(self, msg: OutboundMessage) -> None:
        self.messages.append(msg)
        if self.echo is not None and (line := describe(msg)):
            print(line, file=self.echo, flush=True)

    async def drain(self, timeout: float) -> bool:
        return True

    async def close(self, timeout: float) -> None:
        return None

    def stats(self) -> dict[str, int | float]:
        return {"queued": 0, "delivered": len(self.messages)}

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        return [m.payload for m in self.messages if m.kind == kind]


def _clock(t: float) -> str:
    minutes, seconds = divmod(t, 60.0)
    return f"{int(minutes):02d}:{seconds:05.2f}"


def _bar(p: float, width: int = 20) -> str:
    return "#" * round(p * width) + "." * (width - round(p * width))


def describe(msg: OutboundMessage) -> str | None:
    """One human line for a state, shift, segment or utterance payload; None for other kinds."""
    p = msg.payload
    if msg.kind == "state":
        others = sorted(((k, v) for k, v in p["probs"].items() if k != p["dominant"]), key=lambda kv: -kv[1])
        rest = "  ".join(f"{k} {v:.2f}" for k, v in others[:2])
        return f"{_clock(p['t'])}  {p['dominant']:<10} {p['confidence']:.2f} {_bar(p['confidence'])}  {rest}"
    if msg.kind == "event":
        return f"{_clock(p['t'])}  >>> SHIFT {p['from']} -> {p['to']} (confidence {p['confidence']:.2f})"
    if msg.kind == "segment" and p["type"] == "utterance":
        return (f"{_clock(p['t'])}  === utterance {_clock(p['start'])}-{_clock(p['end'])}: {p['label']} "
                f"({p['confidence']:.2f})")
    if msg.kind == "segment":
        return f"{_clock(p['t'])}  --- speech {'starts' if p['type'] == 'segment_start' else 'ends'}"
    return None


def print_summary(recorder: RecordingPublisher, out: TextIO = sys.stdout) -> None:
    states = recorder.payloads("state")
    shifts = recorder.payloads("event")
    print(f"\n{len(states)} states, {len(shifts)} shifts", file=out)
