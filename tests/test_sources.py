"""Audio sources end to end with real clips: file replay, stdin pipes, TCP calls, the microphone; codecs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from pydantic import TypeAdapter, ValidationError
from sinks import RecordingSink

from edge_ser.audio import load_audio
from edge_ser.sources import (
    FileSource,
    FileSourceConfig,
    MicSourceConfig,
    NetworkSource,
    NetworkSourceConfig,
    SourceConfig,
    StdinSource,
    StdinSourceConfig,
    make_source,
)
from edge_ser.sources.codecs import (
    ALAW_TO_INT16,
    MULAW_TO_INT16,
    decode_alaw,
    decode_mulaw,
    decode_s16le,
    encode_alaw,
    encode_mulaw,
    encode_s16le,
)

DATA = Path("/work/shared/data")
CLIP = DATA / "ravdess/Actor_05/03-01-04-02-01-02-05.opus"  # 3.27 s
SHORT = DATA / "tess/OAF_angry/OAF_dead_angry.opus"  # 1.48 s
TIMEOUT_S = 20.0


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    if not CLIP.exists():
        pytest.skip(f"real audio not available: {CLIP} is missing")
    return load_audio(CLIP)


@pytest.fixture(scope="module")
def short() -> np.ndarray:
    if not SHORT.exists():
        pytest.skip(f"real audio not available: {SHORT} is missing")
    return load_audio(SHORT)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# --- configs ---------------------------------------------------------------------------------------------

def test_source_config_is_a_discriminated_union(tmp_path: Path) -> None:
    adapter = TypeAdapter(SourceConfig)
    cfg = adapter.validate_python({"type": "file", "id": "replay", "path": str(tmp_path / "x.wav")})
    assert isinstance(cfg, FileSourceConfig) and cfg.realtime and cfg.block_s == 0.1
    assert isinstance(adapter.validate_python({"type": "network", "id": "pbx", "port": 0}), NetworkSourceConfig)
    assert isinstance(adapter.validate_python({"type": "stdin", "id": "pipe", "format": "f32le"}),
                      StdinSourceConfig)
    assert isinstance(adapter.validate_python({"type": "mic", "id": "room", "device": "USB"}), MicSourceConfig)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        adapter.validate_python({"type": "rtsp", "id": "x"})
    with pytest.raises(ValidationError, match="extra"):
        adapter.validate_python({"type": "stdin", "id": "x", "rate": 8000})
    with pytest.raises(ValidationError, match="retry_min_s"):
        MicSourceConfig(id="m", retry_min_s=10, retry_max_s=1)


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "a#b", "a\x00b", "x" * 65])
def test_stream_ids_are_validated(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="stream id"):
        FileSourceConfig(id=bad, path=tmp_path / "x.wav")


def test_make_source_builds_each_kind(tmp_path: Path) -> None:
    assert isinstance(make_source(FileSourceConfig(id="f", path=tmp_path / "x.wav")), FileSource)
    assert isinstance(make_source(StdinSourceConfig(id="s")), StdinSource)
    assert isinstance(make_source(NetworkSourceConfig(id="n", port=0)), NetworkSource)


# --- codecs ----------------------------------------------------------------------------------------------

def test_g711_tables_match_the_reference_values() -> None:
    assert MULAW_TO_INT16[[0x00, 0x7F, 0x80, 0xFF]].tolist() == [-32124, 0, 32124, 0]
    assert ALAW_TO_INT16[[0xD5, 0x55, 0xAA, 0x2A]].tolist() == [8, -8, 32256, -32256]
    codes = bytes(range(256))
    # every code word survives decode -> encode (mu-law's two zeros both encode to 0xFF)
    assert encode_alaw(decode_alaw(codes)) == codes
    assert encode_mulaw(decode_mulaw(codes)) == codes.replace(b"\x7f", b"\xff")


def test_g711_codecs_match_audioop_bit_for_bit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop", reason="audioop (the reference) was removed in Python 3.13")
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    codes = bytes(range(256))
    assert encode_mulaw(pcm / 32768.0) == audioop.lin2ulaw(pcm.tobytes(), 2)
    assert encode_alaw(pcm / 32768.0) == audioop.lin2alaw(pcm.tobytes(), 2)
    assert MULAW_TO_INT16.tobytes() == audioop.ulaw2lin(codes, 2)
    assert ALAW_TO_INT16.tobytes() == audioop.alaw2lin(codes, 2)


def test_s16le_round_trip_and_odd_length(clip: np.ndarray) -> None:
    np.testing.assert_allclose(decode_s16le(encode_s16le(clip)), clip, atol=1 / 32768)
    with pytest.raises(ValueError, match="even number of bytes"):
        decode_s16le(b"\x00\x01\x02")


# --- file source -----------------------------------------------------------------------------------------

def test_file_fast_replay_delivers_the_whole_clip(clip: np.ndarray) -> None:
    sink = RecordingSink()
    run(FileSource(FileSourceConfig(id="replay", path=CLIP, realtime=False)).run(sink))
    assert sink.events == [("started", "replay"), ("ended", "replay")]
    assert sink.ended["replay"] == ("end of file", False)
    assert sink.started["replay"]["sample_rate"] == 16000 and "description" in sink.started["replay"]
    assert all(b.samples.size == 1600 for b in sink.blocks["replay"][:-1])
    np.testing.assert_allclose(sink.samples("replay"), clip, atol=1e-6)


def test_file_realtime_replay_runs_at_wall_speed(short: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "one_second.wav"
    sf.write(path, short[:16000], 16000)
    sink = RecordingSink()
    began = time.monotonic()
    run(FileSource(FileSourceConfig(id="rt", path=path, realtime=True, block_s=0.05)).run(sink))
    elapsed = time.monotonic() - began
    assert sink.samples("rt").size == 16000
    assert elapsed >= 0.9, f"1 s of audio replayed in {elapsed:.2f} s"


def test_file_replay_speed_and_start_offset(short: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "one_second.wav"
    sf.write(path, short[:16000], 16000)
    sink = RecordingSink()
    began = time.monotonic()
    run(FileSource(FileSourceConfig(id="fast", path=path, realtime=True, speed=4.0, start_s=0.25,
                                    block_s=0.1)).run(sink))
    elapsed = time.monotonic() - began
    got = sink.samples("fast")
    np.testing.assert_allclose(got, short[4000:16000], atol=1e-4)  # from 0.25 s on; stream time starts at 0
    assert 0.15 <= elapsed < 0.6, f"0.75 s of audio at x4 took {elapsed:.2f} s"
    assert "realtime x4" in sink.started["fast"]["description"]

    late = RecordingSink()
    run(FileSource(FileSourceConfig(id="late", path=path, realtime=False, start_s=5.0)).run(late))
    reason, error = late.ended["late"]
    assert error and "start_s 5 s is past the end of the file" in reason and late.samples("late").size == 0


def test_file_replay_of_44k1_stereo(clip: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "stereo.flac"
    up = soxr.resample(clip, 16000, 44100)
    sf.write(path, np.stack([up, up], axis=1), 44100)
    sink = RecordingSink()
    run(FileSource(FileSourceConfig(id="st", path=path, realtime=False, block_s=0.25)).run(sink))
    got = sink.samples("st")
    assert abs(got.size - clip.size) <= 2 and _corr(got, clip) > 0.999


def test_file_loop_keeps_stream_time_counting(short: np.ndarray) -> None:
    sink = RecordingSink()

    async def main() -> None:
        task = asyncio.create_task(FileSource(FileSourceConfig(id="loop", path=SHORT, realtime=False,
                                                               loop=True)).run(sink))
        while sum(b.samples.size for b in sink.blocks.get("loop", [])) < 2.5 * short.size:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    got = sink.samples("loop")
    assert got.size >= 2.5 * short.size
    np.testing.assert_allclose(got[short.size:2 * short.size], short, atol=1e-6)
    assert "loop" not in sink.ended  # cancelled: the owner ends live streams itself


def test_file_problems_are_reported_not_raised(tmp_path: Path) -> None:
    sink = RecordingSink()
    run(FileSource(FileSourceConfig(id="gone", path=tmp_path / "nope.wav", realtime=False)).run(sink))
    reason, error = sink.ended["gone"]
    assert error and "nope.wav: file not found" in reason and "gone" not in sink.started


# --- stdin source ----------------------------------------------------------------------------------------

def _pipe_writer(data: bytes, chunk: int = 3001) -> tuple[Any, threading.Thread]:
    """A read end for the source and a thread writing ``data`` into the pipe in odd-sized chunks."""
    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb", buffering=0) as out:
            for i in range(0, len(data), chunk):
                out.write(data[i:i + chunk])

    thread = threading.Thread(target=write, daemon=True)
    return os.fdopen(r, "rb", buffering=0), thread


def test_stdin_s16le_16k_through_a_pipe(clip: np.ndarray) -> None:
    reader, writer = _pipe_writer(encode_s16le(clip))
    sink = RecordingSink()
    writer.start()
    with reader:
        run(StdinSource(StdinSourceConfig(id="pipe"), stream=reader).run(sink))
    writer.join()
    assert sink.ended["pipe"][1] is False
    np.testing.assert_allclose(sink.samples("pipe"), clip, atol=1 / 32768 + 1e-6)


def test_stdin_f32le_stereo_8k_through_a_pipe(clip: np.ndarray) -> None:
    x8 = soxr.resample(clip, 16000, 8000).astype("<f4")
    reader, writer = _pipe_writer(np.stack([x8, x8], axis=1).tobytes())
    sink = RecordingSink()
    writer.start()
    with reader:
        run(StdinSource(StdinSourceConfig(id="pipe", format="f32le", sample_rate=8000, channels=2),
                        stream=reader).run(sink))
    writer.join()
    got = sink.samples("pipe")
    assert abs(got.size - clip.size) <= 2 and _corr(got, clip) > 0.95


def test_stdin_from_a_regular_file_and_nan_input(clip: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "pcm.raw"
    path.write_bytes(encode_s16le(clip[:8000]))
    sink = RecordingSink()
    with path.open("rb") as f:
        run(StdinSource(StdinSourceConfig(id="file"), stream=f).run(sink))
    assert sink.samples("file").size == 8000 and not sink.ended["file"][1]
    bad = clip[:4000].astype("<f4")
    bad[100] = np.nan
    path.write_bytes(bad.tobytes())
    with path.open("rb") as f:
        run(StdinSource(StdinSourceConfig(id="nan", format="f32le"), stream=f).run(sink))
    reason, error = sink.ended["nan"]
    assert error and "1 NaN" in reason


def test_stdin_waiting_for_data_does_not_block_the_loop() -> None:
    r, w = os.pipe()
    sink = RecordingSink()

    async def main() -> int:
        with os.fdopen(r, "rb", buffering=0) as reader:
            task = asyncio.create_task(StdinSource(StdinSourceConfig(id="idle"), stream=reader).run(sink))
            ticks = 0
            for _ in range(10):  # the producer is silent: other tasks still run
                await asyncio.sleep(0.01)
                ticks += 1
            os.write(w, b"\x00\x01" * 1600)
            while not sink.blocks.get("idle"):
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return ticks

    try:
        assert run(main()) == 10
    finally:
        os.close(w)
    assert sink.samples("idle").size == 1600 and "idle" not in sink.ended


# --- network source --------------------------------------------------------------------------------------

async def _serve(sink: RecordingSink, **options: Any) -> tuple[NetworkSource, asyncio.Task[None], int]:
    source = NetworkSource(NetworkSourceConfig(id="pbx", port=0, **options))
    task = asyncio.create_task(source.run(sink))
    _, port = await source.wait_serving()
    return source, task, port


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _call(port: int, hello: bytes, payload: bytes = b"", chunk: int = 4000) -> list[dict[str, Any]]:
    """One client call: handshake, audio, EOF; returns every JSON line the server sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello)
    first = await reader.readline()
    replies = [json.loads(first)] if first else []
    if replies and replies[0]["ok"]:
        for i in range(0, len(payload), chunk):
            writer.write(payload[i:i + chunk])
            await writer.drain()
        writer.write_eof()
    replies += [json.loads(line) for line in (await reader.read()).splitlines() if line]
    writer.close()
    return replies


def _hello(stream_id: str, encoding: str, rate: int) -> bytes:
    return json.dumps({"stream_id": stream_id, "encoding": encoding, "sample_rate": rate}).encode() + b"\n"


@pytest.mark.parametrize(("encoding", "rate"), [("mulaw", 8000), ("alaw", 8000), ("pcm_s16le", 16000),
                                                ("pcm_s16le", 8000)])
def test_network_call_delivers_the_clip(clip: np.ndarray, encoding: str, rate: int) -> None:
    audio = clip if rate == 16000 else soxr.resample(clip, 16000, rate)
    payload = {"mulaw": encode_mulaw, "alaw": encode_alaw, "pcm_s16le": encode_s16le}[encoding](audio)
    sink = RecordingSink()

    async def main() -> list[dict[str, Any]]:
        _, task, port = await _serve(sink)
        replies = await _call(port, _hello("call-1", encoding, rate), payload)
        await sink.wait_ended("call-1")
        await _stop(task)
        return replies

    replies = run(main())
    assert replies == [{"ok": True, "stream_id": "call-1"}]
    assert sink.ended["call-1"][1] is False
    assert sink.started["call-1"]["encoding"] == encoding
    got = sink.samples("call-1")
    assert abs(got.size - clip.size) <= 4
    if encoding == "pcm_s16le" and rate == 16000:
        np.testing.assert_allclose(got, clip, atol=1 / 32768 + 1e-6)
    else:
        assert _corr(got, clip) > 0.95  # G.711 and the 4 kHz telephone band keep the speech


@pytest.mark.parametrize(("hello", "message"), [
    (b"this is not json\n", "not a JSON object line"),
    (b"[1, 2]\n", "must be a JSON object"),
    (b'{"stream_id": "a", "encoding": "opus", "sample_rate": 8000}\n', "encoding"),
    (b'{"stream_id": "a", "encoding": "mulaw", "sample_rate": 44100}\n', "sample_rate"),
    (b'{"stream_id": "a/b", "encoding": "mulaw", "sample_rate": 8000}\n', "stream id"),
    (b'{"stream_id": "a", "encoding": "mulaw"}\n', "sample_rate"),
    (b'{"stream_id": "a", "encoding": "mulaw", "sample_rate": 8000, "codec": 1}\n', "codec"),
    (b'{"stream_id": "' + b"x" * 5000 + b'"}\n', "longer than 4096 bytes"),
    (b'{"stream_id": "a"', "connection closed before the handshake line ended"),
])
def test_network_malformed_handshake_gets_an_error_reply(hello: bytes, message: str) -> None:
    sink = RecordingSink()

    async def main() -> tuple[list[dict[str, Any]], dict[str, int]]:
        source, task, port = await _serve(sink)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello)
        if not hello.endswith(b"\n"):
            writer.write_eof()
        replies = [json.loads(line) for line in (await reader.read()).splitlines()]
        writer.close()
        await _stop(task)
        return replies, source.stats()

    replies, stats = run(main())
    assert len(replies) == 1 and replies[0]["ok"] is False
    assert message in replies[0]["error"]
    assert sink.events == [] and stats["refused"] == 1


def test_network_bad_connections_do_not_affect_a_good_one(clip: np.ndarray) -> None:
    sink = RecordingSink()
    payload = encode_mulaw(soxr.resample(clip, 16000, 8000))

    async def garbage(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
        lines = (await reader.read()).splitlines()
        writer.close()
        return lines

    async def stalled(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_hello("stalled", "mulaw", 8000) + payload[:4000])  # then nothing: a hung switch
        lines = (await reader.read()).splitlines()
        writer.close()
        return lines

    async def main() -> tuple[list[dict[str, Any]], list[bytes], dict[str, int]]:
        source, task, port = await _serve(sink, idle_timeout_s=0.5)
        good, stall_lines, garbage_lines = await asyncio.gather(
            _call(port, _hello("good", "mulaw", 8000), payload, 800), stalled(port), garbage(port))
        assert [json.loads(x)["ok"] for x in garbage_lines] == [False]
        await sink.wait_ended("good")
        await sink.wait_ended("stalled")
        again = await _call(port, _hello("after", "pcm_s16le", 16000), encode_s16le(clip[:16000]))
        await sink.wait_ended("after")
        stats = source.stats()
        await _stop(task)
        return good + again, stall_lines, stats

    replies, stall_lines, stats = run(main())
    assert [r["ok"] for r in replies] == [True, True]
    assert sink.ended["good"][1] is False and abs(sink.samples("good").size - clip.size) <= 4
    reason, error = sink.ended["stalled"]
    assert error and "idle" in reason
    assert 7500 <= sink.samples("stalled").size <= 8100  # the 0.5 s it did send
    assert [json.loads(x)["ok"] for x in stall_lines] == [True, False]
    assert sink.ended["after"][1] is False and sink.samples("after").size == 16000
    assert stats["refused"] == 1 and stats["idle_closed"] == 1 and stats["live"] == 0


def test_network_refuses_a_duplicate_live_stream_id_and_too_many_connections() -> None:
    sink = RecordingSink()

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        _, task, port = await _serve(sink, max_connections=2)
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(_hello("dup", "mulaw", 8000))
        assert json.loads(await r1.readline())["ok"] is True
        dup = await _call(port, _hello("dup", "mulaw", 8000))
        _, w2 = await asyncio.open_connection("127.0.0.1", port)  # in its handshake: still a connection
        full = await _call(port, _hello("third", "mulaw", 8000))
        w2.close()
        w1.write_eof()
        await sink.wait_ended("dup")
        w1.close()
        await _stop(task)
        return dup, full

    dup, full = run(main())
    assert dup[0]["ok"] is False and "already live" in dup[0]["error"]
    assert full[0]["ok"] is False and "server full" in full[0]["error"]
    assert sink.ended["dup"] == ("end of call after 0.00 s (0 bytes)", False)


def test_network_backpressure_from_a_slow_sink(short: np.ndarray) -> None:
    """A sink that takes its time slows the call down through TCP; nothing is lost."""
    sink = RecordingSink(delay_s=0.002)

    async def main() -> None:
        _, task, port = await _serve(sink, block_s=0.02)
        await _call(port, _hello("slow", "pcm_s16le", 16000), encode_s16le(short))
        await sink.wait_ended("slow")
        await _stop(task)

    run(main())
    assert abs(sink.samples("slow").size - short.size) <= 1


def test_network_stop_with_a_live_call_closes_it(short: np.ndarray) -> None:
    sink = RecordingSink()

    async def main() -> bytes:
        _, task, port = await _serve(sink)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_hello("live", "pcm_s16le", 16000) + encode_s16le(short[:8000]))
        await reader.readline()
        while sum(b.samples.size for b in sink.blocks.get("live", [])) < 6400:
            await asyncio.sleep(0.01)
        await _stop(task)
        rest = await reader.read()  # the server closed the call
        writer.close()
        return rest

    assert run(main()) == b""
    assert "live" in sink.started and "live" not in sink.ended  # the owner ends live streams on shutdown


# --- microphone ------------------------------------------------------------------------------------------

def _devices() -> list[dict[str, Any]]:
    return [
        {"index": 0, "name": "HDA Intel PCH: ALC892 Analog (hw:0,0)", "max_input_channels": 2,
         "max_output_channels": 2, "default_samplerate": 44100.0, "is_default_input": False},
        {"index": 1, "name": "HDMI 0", "max_input_channels": 0, "max_output_channels": 8,
         "default_samplerate": 48000.0, "is_default_input": False},
        {"index": 2, "name": "USB Audio Device: Mic (hw:1,0)", "max_input_channels": 1,
         "max_output_channels": 0, "default_samplerate": 48000.0, "is_default_input": True},
    ]


def test_resolve_input_device_by_name_index_or_default() -> None:
    from edge_ser.sources.base import SourceError
    from edge_ser.sources.mic import resolve_input_device

    devices = _devices()
    assert resolve_input_device(devices, None)["index"] == 2
    assert resolve_input_device(devices, "usb audio")["index"] == 2
    assert resolve_input_device(devices, 0)["index"] == 0
    with pytest.raises(SourceError, match=r"no input device with index 1; input devices: #0 'HDA"):
        resolve_input_device(devices, 1)  # an output-only device
    with pytest.raises(SourceError, match="no input device matching 'webcam'"):
        resolve_input_device(devices, "webcam")
    with pytest.raises(SourceError, match="no audio input device found"):
        resolve_input_device(devices[1:2], None)


def test_list_devices_reports_every_device() -> None:
    from edge_ser.sources.mic import list_devices

    devices = list_devices()
    assert isinstance(devices, list)
    for dev in devices:
        assert {"index", "name", "hostapi", "max_input_channels", "default_samplerate"} <= dev.keys()


def test_missing_microphone_is_reported_and_retried() -> None:
    from edge_ser.sources.mic import MicSource

    sink = RecordingSink()
    source = MicSource(MicSourceConfig(id="mic", device="no-such-device-xyz", retry_min_s=0.05,
                                       retry_max_s=0.1))

    async def main() -> None:
        task = asyncio.create_task(source.run(sink))
        await sink.wait_ended("mic")
        await asyncio.sleep(0.4)
        await _stop(task)

    run(main())
    reason, error = sink.ended["mic"]
    assert error and "no-such-device-xyz" in reason
    assert sink.events == [("ended", "mic")]  # reported once per outage, not once per retry
    assert source.stats()["open_failures"] >= 3


def test_microphone_records_half_a_second() -> None:
    from edge_ser.sources.mic import MicSource, list_devices

    inputs = [d for d in list_devices() if d["max_input_channels"] > 0]
    if not inputs:
        reason = "sounddevice.query_devices() lists no input device on this machine"
        print(reason)
        pytest.skip(reason)
    sink = RecordingSink()

    async def main() -> None:
        task = asyncio.create_task(MicSource(MicSourceConfig(id="mic", block_s=0.05)).run(sink))
        while sum(b.samples.size for b in sink.blocks.get("mic", [])) < 8000 and "mic" not in sink.ended:
            await asyncio.sleep(0.02)
        await _stop(task)

    run(main())
    assert "mic" not in sink.ended, sink.ended.get("mic")
    got = sink.samples("mic")
    assert got.size >= 8000 and np.isfinite(got).all()


_ASOUNDRC = """pcm.edgesertest {
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "%s"
    format "raw"
    hint { show on description "edge-ser test capture" }
}
"""

_SUBPROCESS_SINK = """
# An AudioSink that keeps what a source delivers (the scripts below run in a subprocess with its own HOME).
class Sink:
    def __init__(self): self.blocks, self.events = [], []
    async def stream_started(self, sid, info): self.events.append(["started", sid])
    async def audio(self, block): self.blocks.append(block)
    async def stream_ended(self, sid, reason, error): self.events.append(["ended", reason, error])

async def stop(task):  # cancel the source's task and wait for it
    task.cancel()
    try:
        await task
    except BaseException:
        pass
"""

_MIC_SCRIPT = _SUBPROCESS_SINK + """
import asyncio, json, sys
import numpy as np
from edge_ser.sources.mic import MicSource, MicSourceConfig, list_devices

async def main():
    sink = Sink()
    source = MicSource(MicSourceConfig(id="mic", device="edgesertest", sample_rate=16000, queue_blocks=20))
    task = asyncio.create_task(source.run(sink))
    for _ in range(10):  # the loop keeps ticking although the device delivers far faster than real time
        await asyncio.sleep(0.05)
    await stop(task)
    np.concatenate([b.samples for b in sink.blocks[:20]]).astype("<f4").tofile(sys.argv[1])
    t0s = [b.t0 for b in sink.blocks]
    ordered = all(b.t0 >= a.t1 - 1e-9 for a, b in zip(sink.blocks, sink.blocks[1:]))
    gaps = sum(b.t0 > a.t1 + 1e-9 for a, b in zip(sink.blocks, sink.blocks[1:]))
    print(json.dumps({"events": sink.events, "blocks": len(t0s), "ordered": ordered, "gaps": gaps,
                      "stats": source.stats()}))

asyncio.run(main())
"""


def test_microphone_path_through_a_virtual_alsa_device(clip: np.ndarray, tmp_path: Path) -> None:
    """No microphone here: ALSA's ``file`` plugin plays a real clip as a capture device, so the real
    PortAudio callback -> hand-off -> resampler -> blocks path runs (in a subprocess with its own ~/.asoundrc).
    The plugin's ``null`` slave has no clock, so it also shows that a runaway device cannot starve the loop."""
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA configuration (/usr/share/alsa/alsa.conf) not installed")
    raw = tmp_path / "clip.f32"
    speech = clip[16000:]  # from 1 s on: speech, not the clip's leading silence
    speech.astype("<f4").tofile(raw)
    (tmp_path / ".asoundrc").write_text(_ASOUNDRC % raw)
    out = tmp_path / "captured.f32"
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _MIC_SCRIPT, str(out)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    if "no input device matching 'edgesertest'" in proc.stderr:
        pytest.skip("PortAudio does not list the virtual ALSA device on this machine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["events"] == [["started", "mic"]]  # cancelled: no stream_ended from the source
    assert result["blocks"] >= 20 and result["ordered"]
    # dropped blocks are counted and skipped in stream time
    assert (result["gaps"] > 0) == (result["stats"]["overflows"] > 0)
    captured = np.fromfile(out, dtype="<f4")
    np.testing.assert_array_equal(captured[:1600], speech[:1600])  # the first block is the clip, bit for bit


_HOTPLUG_SCRIPT = _SUBPROCESS_SINK + """
import asyncio, json, sys
from pathlib import Path
from edge_ser.sources.mic import MicSource, MicSourceConfig

async def main():
    sink = Sink()
    source = MicSource(MicSourceConfig(id="mic", device="edgesertest", sample_rate=16000, queue_blocks=20,
                                       retry_min_s=0.1, retry_max_s=0.2))
    task = asyncio.create_task(source.run(sink))
    while not sink.events:  # unplugged: the first open fails and is reported
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # a few retries while it is still missing
    Path(sys.argv[1]).write_text(sys.argv[2])  # plugged in: the device appears in ALSA's configuration
    for _ in range(100):
        if len(sink.blocks) >= 5:
            break
        await asyncio.sleep(0.05)
    await stop(task)
    print(json.dumps({"events": sink.events, "blocks": len(sink.blocks), "stats": source.stats()}))

asyncio.run(main())
"""


def test_microphone_that_appears_later_is_picked_up(clip: np.ndarray, tmp_path: Path) -> None:
    """Hot-plug: the device does not exist when the agent starts (reported once, retried with backoff), then
    appears (a virtual ALSA capture device is added to ~/.asoundrc); the next retry rescans PortAudio's
    device list and the stream starts, with no restart of the agent."""
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA configuration (/usr/share/alsa/alsa.conf) not installed")
    raw = tmp_path / "clip.f32"
    clip.astype("<f4").tofile(raw)
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _HOTPLUG_SCRIPT, str(tmp_path / ".asoundrc"), _ASOUNDRC % raw],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["blocks"] == 0 and "edgesertest" in proc.stderr and result["stats"]["open_failures"] > 5:
        pytest.skip("PortAudio does not list the virtual ALSA device on this machine (even after a rescan)")
    first, *rest = result["events"]
    assert first[0] == "ended" and first[2] is True and "edgesertest" in first[1]
    assert rest == [["started", "mic"]], result["events"]
    assert result["blocks"] >= 5 and result["stats"]["open_failures"] >= 2
