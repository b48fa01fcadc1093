"""Property-based tests (hypothesis) of everything that reads untrusted bytes: the audio decoders, the
network source's handshake and framing, the G.711 / PCM codecs, the config loader and the checkpoint loader.

Each must either succeed with a well-formed result or raise its own documented error (``AudioError``,
``HandshakeError``, ``ConfigError``, ``CheckpointError``, ``ValueError`` for the codecs) naming the input;
nothing else may escape. Inputs are random bytes, real files with truncated or overwritten headers (huge
declared sizes and channel counts), and well-typed structures filled with wrongly typed values.
``benchmarks/fuzz.py`` runs the same surfaces with many more inputs and prints the counts and memory.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sinks import RecordingSink

from edge_ser.audio import AudioError, describe_file, iter_audio_blocks, load_audio
from edge_ser.checkpoint import CheckpointError, load_checkpoint, sha256_bytes
from edge_ser.config import ConfigError, load_config
from edge_ser.sources.codecs import decode_alaw, decode_mulaw, decode_s16le
from edge_ser.sources.network import HandshakeError, NetworkSource, NetworkSourceConfig, parse_handshake

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLIP = DATA / "emodb/wav/08a01Wa.opus"
MODEL = ROOT / "models" / "default"

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@functools.cache
def _real_files() -> dict[str, bytes]:
    """The same real speech as Ogg/Opus (as shipped), WAV and FLAC."""
    if not CLIP.is_file():
        pytest.skip(f"corpus clip not available: {CLIP}")
    audio = load_audio(CLIP)
    out = {".opus": CLIP.read_bytes()}
    for suffix, fmt in ((".wav", "WAV"), (".flac", "FLAC")):
        buffer = io.BytesIO()
        sf.write(buffer, audio, 16_000, format=fmt, subtype="PCM_16")
        out[suffix] = buffer.getvalue()
    return out


def _decode_everything(path: Path) -> None:
    """Every public decoding entry point on ``path``: result well-formed, or AudioError."""
    for call in (lambda: describe_file(path), lambda: load_audio(path, max_seconds=60.0),
                 lambda: sum(block.size for block in iter_audio_blocks(path, 0.5))):
        try:
            result = call()
        except AudioError as exc:
            assert str(path.name) in str(exc), f"error does not name the file: {exc}"
            continue
        if isinstance(result, np.ndarray):
            assert result.dtype == np.float32 and result.ndim == 1 and np.all(np.isfinite(result))


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".wav", ".flac", ".opus", ".ogg", ".bin"]))
def test_audio_decoders_take_random_bytes(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random{suffix}"
        path.write_bytes(data)
        _decode_everything(path)


@FUZZ
@given(kind=st.sampled_from([".opus", ".wav", ".flac"]), cut=st.floats(0.0, 1.0),
       patches=st.lists(st.tuples(st.integers(0, 200), st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                                                       b"\xff\xff\xff\x7f", b"\x01"])),
                        max_size=4))
def test_audio_decoders_take_damaged_real_files(kind: str, cut: float, patches: list[tuple[int, bytes]]) -> None:
    original = bytearray(_real_files()[kind])
    for offset, value in patches:  # overwrite header fields: sizes, channel counts, rates, chunk ids
        original[offset:offset + len(value)] = value
    data = bytes(original[: max(1, int(len(original) * cut))])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"damaged{kind}"
        path.write_bytes(data)
        _decode_everything(path)


def test_wav_declaring_four_billion_frames_and_65535_channels_is_refused_without_allocating() -> None:
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 65535, 16000, 16000 * 2 * 65535, 65535, 16) + b"data" + struct.pack("<I", 0xFFFFFFF0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.wav"
        path.write_bytes(header + b"\x00" * 1000)
        with pytest.raises(AudioError, match=r"huge\.wav"):
            load_audio(path)


@FUZZ
@given(data=st.binary(max_size=512))
def test_codecs_take_any_bytes(data: bytes) -> None:
    for decode in (decode_mulaw, decode_alaw):
        samples = decode(data)
        assert samples.dtype == np.float32 and samples.size == len(data) and np.all(np.abs(samples) <= 1.0)
    try:
        samples = decode_s16le(data)
    except ValueError as exc:
        assert len(data) % 2 == 1 and "even number of bytes" in str(exc)
    else:
        assert samples.size == len(data) // 2 and np.all(np.abs(samples) <= 1.0)


@FUZZ
@given(line=st.binary(max_size=300) | st.builds(
    lambda d: json.dumps(d).encode(), st.fixed_dictionaries(
        {}, optional={"stream_id": json_values, "encoding": json_values, "sample_rate": json_values,
                      "extra": json_values})))
def test_handshake_parser_takes_anything(line: bytes) -> None:
    try:
        hello = parse_handshake(line)
    except HandshakeError as exc:
        assert str(exc)
    else:
        assert hello.encoding in ("mulaw", "alaw", "pcm_s16le") and hello.sample_rate in (8000, 16000)


@settings(max_examples=15, deadline=None)
@given(hello=st.binary(max_size=200) | st.just(b'{"stream_id": "x", "encoding": "mulaw", "sample_rate": 8000}\n'),
       body=st.binary(max_size=3000), eof=st.booleans())
def test_network_framing_survives_garbage_and_still_serves_a_good_call(hello: bytes, body: bytes, eof: bool) -> None:
    """A client sends arbitrary bytes (maybe a valid handshake, then garbage audio); the server answers or
    closes, never dies, and the next well-formed call is served in full."""
    sink = RecordingSink()

    async def main() -> tuple[dict[str, int], int]:
        source = NetworkSource(NetworkSourceConfig(id="pbx", port=0, idle_timeout_s=0.3, handshake_timeout_s=0.3))
        task = asyncio.create_task(source.run(sink))
        _, port = await source.wait_serving()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello + body)
        if eof:
            writer.write_eof()
        await asyncio.wait_for(reader.read(), 5.0)  # the server closes: error reply, idle or end of call
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"stream_id": "good", "encoding": "pcm_s16le", "sample_rate": 16000}\n' + b"\x00\x01" * 8000)
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        await asyncio.wait_for(sink.wait_ended("good"), 5.0)
        stats = source.stats()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return stats, sink.samples("good").size

    stats, good_samples = asyncio.run(main())
    assert good_samples == 8000
    assert sink.ended["good"] == ("end of call after 0.50 s (16000 bytes)", False)
    assert stats["live"] == 0


CONFIG_KEYS = ["device_id", "sources", "vad", "windows", "engine", "model", "smoothing", "publisher", "stats",
               "batching", "log_level", "metrics"]


@FUZZ
@given(text=st.text(max_size=300))
def test_config_loader_takes_any_text(text: str) -> None:
    _load_config_text(text)


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, max_size=5),
       source=st.dictionaries(st.sampled_from(["type", "id", "path", "port", "device", "realtime", "speed"]),
                              json_values, max_size=5))
def test_config_loader_takes_wrongly_typed_values(doc: dict[str, Any], source: dict[str, Any]) -> None:
    doc.setdefault("sources", [source])
    _load_config_text(json.dumps(doc, allow_nan=True))


def _load_config_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except ConfigError as exc:
            assert "agent.yaml" in str(exc), f"error does not name the file: {exc}"


META_FIELDS = ["model_id", "labels", "encoder_layers", "head", "features", "finetuned_layers", "base",
               "class_log_prior", "window", "training", "metrics", "weights_sha256", "format", "prosody", "stats"]


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MODEL / "model.json").is_file():
        pytest.skip("no trained model in models/default")
    folder = tmp_path_factory.mktemp("model")
    shutil.copytree(MODEL, folder, dirs_exist_ok=True)
    return folder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(META_FIELDS), value=json_values)
def test_checkpoint_loader_takes_wrongly_typed_metadata(model_copy: Path, field: str, value: Any) -> None:
    meta = json.loads((MODEL / "model.json").read_text())
    meta[field] = value
    _load_mutated(model_copy, json.dumps(meta, allow_nan=True).encode(), (MODEL / "model.safetensors").read_bytes())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), patches=st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=8)),
                                                 max_size=4))
def test_checkpoint_loader_takes_damaged_weights(model_copy: Path, cut: float,
                                                 patches: list[tuple[int, bytes]]) -> None:
    """Damaged safetensors whose checksum was updated to match: the parser itself must refuse them."""
    weights = bytearray((MODEL / "model.safetensors").read_bytes())
    for offset, value in patches:  # the 8-byte header length, then the JSON header (dtypes, shapes, offsets)
        weights[offset:offset + len(value)] = value
    weights = weights[: max(1, int(len(weights) * cut))] if cut < 1.0 else weights
    (model_copy / "model.safetensors").write_bytes(bytes(weights))
    meta = json.loads((MODEL / "model.json").read_text())
    meta["weights_sha256"] = sha256_bytes(model_copy / "model.safetensors")
    _load_mutated(model_copy, json.dumps(meta).encode(), bytes(weights))


def _load_mutated(folder: Path, meta: bytes, weights: bytes) -> None:
    (folder / "model.json").write_bytes(meta)
    (folder / "model.safetensors").write_bytes(weights)
    try:
        loaded, tensors = load_checkpoint(folder)
    except CheckpointError as exc:
        assert str(folder) in str(exc), f"error does not name the file: {exc}"
    else:
        assert loaded.labels and all(np.all(np.isfinite(t)) for t in tensors.values())

