"""What every audio source shares: the sink protocol it writes into, the Source interface, the config base.

A source produces one or more *streams* (a file, a microphone, one network call each); every stream is a
run of 16 kHz mono float32 ``AudioBlock``s whose ``t0`` is stream-relative (samples so far / 16000).

Contract with the sink (the pipeline):

* ``stream_started`` comes before the stream's first ``audio`` call; ``stream_ended`` comes exactly once
  after it. A stream that fails before any audio (a missing file, an absent microphone) may get a
  ``stream_ended(error=True)`` without a ``stream_started``; the sink must accept that.
* ``audio`` may await (backpressure): the source then simply reads less.
* When ``Source.run`` is cancelled it stops at once and does *not* call ``stream_ended``; the owner
  ends the live streams itself (with its own drain timeout).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, Any, Protocol, runtime_checkable

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from edge_ser.publish.topics import validate_id
from edge_ser.types import SAMPLE_RATE, AudioBlock


class SourceError(RuntimeError):
    """A source cannot run at all (a missing native library, an address already in use)."""


def validate_stream_id(value: str) -> str:
    """Return ``value`` if it can be a stream id (one MQTT topic level), else raise ``ValueError``."""
    return validate_id(value, "stream id")


StreamId = Annotated[str, AfterValidator(validate_stream_id)]
"""A stream id: non-empty, at most 64 characters, no ``+``, ``#``, ``/`` or NUL (it becomes a topic level)."""


@runtime_checkable
class AudioSink(Protocol):
    """Where sources deliver audio; implemented by the pipeline."""

    async def stream_started(self, stream_id: str, info: dict[str, Any]) -> None:
        """A stream begins; ``info`` describes it (``source``, ``description`` and source-specific keys)."""
        ...

    async def audio(self, block: AudioBlock) -> None:
        """The stream's next block of 16 kHz mono float32 samples; may await (backpressure)."""
        ...

    async def stream_ended(self, stream_id: str, reason: str, error: bool) -> None:
        """The stream is over: exhausted (``error=False``) or failed (``error=True``, ``reason`` says why)."""
        ...


class Source(ABC):
    """One configured audio input; ``run`` feeds its streams into a sink until exhausted or cancelled."""

    @abstractmethod
    async def run(self, sink: AudioSink) -> None:
        """Deliver audio until the input is exhausted or the task is cancelled.

        Problems with one stream are reported through ``sink.stream_ended(..., error=True)`` and never
        raised; only a source that cannot run at all raises ``SourceError``.
        """

    def stats(self) -> dict[str, int]:
        """Counters for metrics (overflows, rejected connections, ...); empty unless a source has some."""
        return {}


class SourceConfigBase(BaseModel):
    """Fields common to every source config; subclasses add ``type: Literal[...]`` and their own fields."""

    model_config = ConfigDict(extra="forbid")
    id: StreamId = Field(description="Stream id (for the network source: the source's name in logs and "
                                     "metrics; each call brings its own stream id). No + # / or NUL.")


class BlockAssembler:
    """Cuts a 16 kHz mono stream into blocks of ``block_samples`` stamped with stream-relative ``t0``."""

    def __init__(self, stream_id: str, block_samples: int) -> None:
        if block_samples < 1:
            raise ValueError(f"block_samples must be >= 1, got {block_samples}")
        self.stream_id = stream_id
        self.block_samples = block_samples
        self.samples_out = 0  # samples already handed out (the next block's t0 * SAMPLE_RATE)
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    @property
    def t(self) -> float:
        """Stream time (s) at the end of everything pushed so far."""
        return (self.samples_out + self._pending_n) / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> list[AudioBlock]:
        """Append samples; return every complete block."""
        if samples.size:
            self._pending.append(np.asarray(samples, dtype=np.float32))
            self._pending_n += samples.size
        if self._pending_n < self.block_samples:
            return []
        data = np.concatenate(self._pending)
        n_full = data.size // self.block_samples * self.block_samples
        blocks = [self._make(data[i:i + self.block_samples]) for i in range(0, n_full, self.block_samples)]
        rest = data[n_full:]
        self._pending = [rest] if rest.size else []
        self._pending_n = rest.size
        return blocks

    def flush(self) -> list[AudioBlock]:
        """Return the partial block left over (if any)."""
        if not self._pending_n:
            return []
        data = np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        return [self._make(data)]

    def skip_to(self, sample_index: int) -> None:
        """Move the clock forward to ``sample_index`` (a gap, e.g. while a device was away); drops pending."""
        self._pending, self._pending_n = [], 0
        self.samples_out = max(self.samples_out, sample_index)

    def _make(self, samples: np.ndarray) -> AudioBlock:
        block = AudioBlock(self.stream_id, self.samples_out / SAMPLE_RATE, np.ascontiguousarray(samples))
        self.samples_out += samples.size
        return block
