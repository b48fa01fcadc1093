"""Live microphone capture through PortAudio (sounddevice) as one stream, with reconnection.

The PortAudio callback runs in PortAudio's thread: it only copies the block into a bounded hand-off and
wakes the event loop with ``loop.call_soon_threadsafe`` (one wake-up at a time, so even a runaway device
cannot flood the loop); when the pipeline falls behind, blocks beyond the bound are dropped and counted,
and the stream time skips the lost audio (a gap, which the segmenter treats as a discontinuity).
Any native rate and channel count is accepted: channels are averaged and ``soxr.ResampleStream``
converts to 16 kHz.

When the device errors, stops delivering audio or disappears, the stream is ended with ``error=True`` and
the device is reopened with exponential backoff (``retry_min_s`` .. ``retry_max_s``); the new stream keeps
the same id and its time continues from the first start (the gap is skipped, not filled).

``sounddevice`` is imported lazily: it needs the PortAudio library (``apt install libportaudio2``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from edge_ser.audio import MonoResampler, downmix
from edge_ser.sources.base import AudioSink, BlockAssembler, Source, SourceConfigBase, SourceError
from edge_ser.types import SAMPLE_RATE

log = logging.getLogger(__name__)

_open_streams = 0  # PortAudio streams open in this process (the device list is refreshed only at zero)
_open_lock = threading.Lock()


class MicSourceConfig(SourceConfigBase):
    """A PortAudio input device, delivered as the stream ``id``."""

    type: Literal["mic"] = Field("mic", description="Source kind: live microphone (PortAudio).")
    device: str | int | None = Field(None, description="Input device: index, or a case-insensitive "
                                                       "substring of its name; default: the system default "
                                                       "input. `edge-ser devices` lists them.")
    sample_rate: int | None = Field(None, ge=4000, le=384000, description="Capture rate (Hz); default: the "
                                                                          "device's native rate.")
    channels: int | None = Field(None, ge=1, le=32, description="Channels to capture (averaged to mono); "
                                                                "default 1.")
    block_s: float = Field(0.1, ge=0.01, le=2.0, description="Seconds of audio per delivered block.")
    queue_blocks: int = Field(100, ge=2, le=100000, description="Captured blocks buffered for the pipeline; "
                                                                "beyond that blocks are dropped and counted.")
    stall_timeout_s: float = Field(2.0, gt=0, le=60, description="No audio from the device for this long "
                                                                 "counts as a device failure.")
    retry_min_s: float = Field(0.5, gt=0, le=3600, description="First wait before reopening a failed device.")
    retry_max_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between reopen attempts "
                                                                "(the wait doubles up to it).")

    @model_validator(mode="after")
    def _check_times(self) -> MicSourceConfig:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError(f"retry_min_s ({self.retry_min_s}) must be <= retry_max_s ({self.retry_max_s})")
        if self.stall_timeout_s < 2 * self.block_s:
            raise ValueError(f"stall_timeout_s ({self.stall_timeout_s}) must be at least twice block_s "
                             f"({self.block_s})")
        return self


def import_sounddevice() -> ModuleType:
    """Import sounddevice or raise ``SourceError`` saying what to install."""
    try:
        import sounddevice
    except OSError as exc:  # the wheel imports, but libportaudio is missing
        raise SourceError(f"the mic source needs the PortAudio library: install it with "
                          f"'apt install libportaudio2' ({exc})") from exc
    except ImportError as exc:
        raise SourceError(f"the mic source needs the 'sounddevice' package: pip install sounddevice ({exc})") \
            from exc
    return sounddevice


def _device_dicts(sd: ModuleType) -> list[dict[str, Any]]:
    hostapis = sd.query_hostapis()
    default_in = sd.default.device[0]
    out = []
    for index, dev in enumerate(sd.query_devices()):
        out.append({"index": index, "name": dev["name"], "hostapi": hostapis[dev["hostapi"]]["name"],
                    "max_input_channels": int(dev["max_input_channels"]),
                    "max_output_channels": int(dev["max_output_channels"]),
                    "default_samplerate": float(dev["default_samplerate"]),
                    "is_default_input": index == default_in})
    return out


def list_devices() -> list[dict[str, Any]]:
    """Every PortAudio device: index, name, hostapi, max input/output channels, default rate, default flag."""
    return _device_dicts(import_sounddevice())


def _describe(dev: dict[str, Any]) -> str:
    return f"#{dev['index']} {dev['name']!r} ({dev['max_input_channels']} ch, {dev['default_samplerate']:g} Hz)"


def resolve_input_device(devices: list[dict[str, Any]], spec: str | int | None) -> dict[str, Any]:
    """Pick the input device ``spec`` names (index, or name substring) from ``list_devices()`` output."""
    inputs = [d for d in devices if d["max_input_channels"] > 0]
    available = ", ".join(_describe(d) for d in inputs) or "none"
    if not inputs:
        wanted = "the default input" if spec is None else repr(spec)
        raise SourceError(f"no audio input device found for {wanted} ({len(devices)} device(s) listed, none "
                          "with input channels)")
    if spec is None:
        return next((d for d in inputs if d.get("is_default_input")), inputs[0])
    if isinstance(spec, int):
        for dev in inputs:
            if dev["index"] == spec:
                return dev
        raise SourceError(f"no input device with index {spec}; input devices: {available}")
    matches = [d for d in inputs if spec.lower() in d["name"].lower()]
    if not matches:
        raise SourceError(f"no input device matching {spec!r}; input devices: {available}")
    exact = [d for d in matches if d["name"].lower() == spec.lower()]
    if len(matches) > 1 and not exact:
        log.info("device %r matches %d inputs; using %s", spec, len(matches), _describe(matches[0]))
    return (exact or matches)[0]


class Handoff:
    """Bounded, thread-safe hand-off of captured blocks from PortAudio's thread to the event loop.

    The callback appends under a lock and wakes the loop with ``call_soon_threadsafe`` only when no wake-up
    is pending, so a device delivering faster than the pipeline consumes cannot flood the loop: blocks
    beyond ``capacity`` are dropped in the callback and counted.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: deque[np.ndarray] = deque()
        self._wake_pending = False
        self._ready = asyncio.Event()
        self.dropped = 0  # blocks
        self.dropped_frames = 0
        self.status_flags = 0
        self.finished = False

    def put(self, block: np.ndarray, status: bool) -> None:
        """PortAudio thread: keep a copy of ``block`` (or count it dropped) and wake the loop."""
        with self._lock:
            self.status_flags += status
            if len(self._items) >= self._capacity:
                self.dropped += 1
                self.dropped_frames += len(block)
            else:
                self._items.append(block.copy())
            self._wake()

    def finish(self) -> None:
        """PortAudio thread: the stream stopped (device gone or failed)."""
        with self._lock:
            self.finished = True
            self._wake()

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
                self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, timeout: float) -> tuple[list[np.ndarray], bool]:
        """Loop thread: wait up to ``timeout`` s for blocks; return them and whether the stream finished."""
        async with asyncio.timeout(timeout):  # not wait_for: in 3.11 it can swallow a cancellation
            await self._ready.wait()
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._wake_pending = False
            self._ready.clear()
            return items, self.finished


class MicSource(Source):
    """Captures ``config.device`` into the sink as stream ``config.id`` until cancelled."""

    def __init__(self, config: MicSourceConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._sd = import_sounddevice()
        self._clock = clock
        self._stats = {"overflows": 0, "device_status_flags": 0, "open_failures": 0, "device_failures": 0}

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    async def run(self, sink: AudioSink) -> None:
        cfg = self.config
        assembler = BlockAssembler(cfg.id, round(cfg.block_s * SAMPLE_RATE))
        first_start: float | None = None
        backoff = cfg.retry_min_s
        reported_down = False
        attempts = 0
        while True:
            loop = asyncio.get_running_loop()
            handoff = Handoff(loop, cfg.queue_blocks)
            opening = asyncio.ensure_future(asyncio.to_thread(self._open, handoff, attempts > 0))
            try:
                stream, dev, rate = await asyncio.shield(opening)
            except asyncio.CancelledError:
                opening.add_done_callback(_close_if_opened)  # do not leak a stream opened after the cancel
                raise
            except Exception as exc:  # retried with backoff
                attempts += 1
                self._stats["open_failures"] += 1
                log.warning("mic source %s: %s; retrying in %.1f s", cfg.id, exc, backoff)
                if not reported_down:
                    await sink.stream_ended(cfg.id, f"cannot open microphone: {exc}", True)
                    reported_down = True
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, cfg.retry_max_s)
                continue
            attempts += 1
            if first_start is None:
                first_start = self._clock()
            else:
                assembler.skip_to(round((self._clock() - first_start) * SAMPLE_RATE))
            before = assembler.samples_out
            try:
                description = f"microphone {_describe(dev)} at {rate} Hz"
                await sink.stream_started(cfg.id, {"source": "mic", "description": description,
                                                   "device": dev["name"], "device_index": dev["index"],
                                                   "sample_rate": rate, "t0": before / SAMPLE_RATE})
                reported_down = False
                await self._capture(dev, rate, handoff, assembler, sink)
                reason = "capture stopped"
            except SourceError as exc:
                reason = str(exc)
            except Exception as exc:  # reported, then the device is reopened
                log.exception("mic source %s failed", cfg.id)
                reason = f"capture failed: {exc!r}"
            finally:
                await asyncio.shield(asyncio.to_thread(_close_stream, stream))
                self._stats["device_status_flags"] += handoff.status_flags
            self._stats["device_failures"] += 1
            if assembler.samples_out > before:  # it worked for a while: start the backoff over
                backoff = cfg.retry_min_s
            log.warning("mic source %s: %s; reopening in %.1f s", cfg.id, reason, backoff)
            await sink.stream_ended(cfg.id, reason, True)
            reported_down = True
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, cfg.retry_max_s)

    def _open(self, handoff: Handoff, refresh: bool) -> tuple[Any, dict[str, Any], int]:
        """Find and start the input stream (runs in a worker thread: PortAudio calls block)."""
        with _open_lock:  # one open at a time: refreshing the device list must not race another open
            return self._open_locked(handoff, refresh)

    def _open_locked(self, handoff: Handoff, refresh: bool) -> tuple[Any, dict[str, Any], int]:
        global _open_streams
        sd = self._sd
        cfg = self.config
        if refresh and not _open_streams:
            _refresh_device_list(sd)
        dev = resolve_input_device(_device_dicts(sd), cfg.device)
        rate = cfg.sample_rate or round(dev["default_samplerate"])
        channels = cfg.channels or 1

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            handoff.put(indata, bool(status))

        stream = None
        try:
            stream = sd.InputStream(device=dev["index"], samplerate=rate, channels=channels, dtype="float32",
                                    blocksize=max(1, round(cfg.block_s * rate)), callback=callback,
                                    finished_callback=handoff.finish)
            stream.start()
        except Exception as exc:
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
            raise SourceError(f"cannot open input device {_describe(dev)} at {rate} Hz, {channels} ch: "
                              f"{exc}") from exc
        _open_streams += 1
        log.info("mic source %s: capturing %s at %d Hz, %d ch", cfg.id, _describe(dev), rate, channels)
        return stream, dev, rate

    async def _capture(self, dev: dict[str, Any], rate: int, handoff: Handoff, assembler: BlockAssembler,
                       sink: AudioSink) -> None:
        """Move audio from the hand-off to the sink until the device fails (raises ``SourceError``)."""
        resampler = MonoResampler(rate)
        dropped, dropped_frames = 0, 0
        while True:
            try:
                items, finished = await handoff.take(self.config.stall_timeout_s)
            except TimeoutError:
                raise SourceError(f"no audio from {_describe(dev)} for {self.config.stall_timeout_s:g} s") \
                    from None
            for item in items:
                for block in assembler.push(resampler.process(downmix(item))):
                    await sink.audio(block)
            if handoff.dropped > dropped:  # the dropped blocks came after the ones just taken
                before = self._stats["overflows"]
                self._stats["overflows"] += handoff.dropped - dropped
                if self._stats["overflows"].bit_length() > before.bit_length():  # at 1, 2, 4, 8, ... drops
                    log.warning("mic source %s: pipeline behind, %d block(s) dropped so far", self.config.id,
                                self._stats["overflows"])
                # stream time keeps up with real time: deliver what is buffered, then skip the lost audio
                for block in assembler.push(resampler.process(np.zeros(0, np.float32), last=True)) + \
                        assembler.flush():
                    await sink.audio(block)
                lost = round((handoff.dropped_frames - dropped_frames) * SAMPLE_RATE / rate)
                assembler.skip_to(assembler.samples_out + lost)
                resampler = MonoResampler(rate)
                dropped, dropped_frames = handoff.dropped, handoff.dropped_frames
            if finished:
                raise SourceError(f"input device {_describe(dev)} stopped (disconnected or failed)")


def _close_if_opened(opening: asyncio.Future[tuple[Any, dict[str, Any], int]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        _close_stream(opening.result()[0])


def _close_stream(stream: Any) -> None:
    global _open_streams
    with contextlib.suppress(Exception):
        stream.abort()
    with contextlib.suppress(Exception):
        stream.close()
    with _open_lock:
        _open_streams -= 1


def _refresh_device_list(sd: ModuleType) -> None:
    """Re-initialise PortAudio so a replugged device shows up (call with no stream of ours open)."""
    try:
        sd._terminate()
        sd._initialize()
    except Exception as exc:  # the old list is still usable
        log.debug("could not refresh the PortAudio device list: %s", exc)
