"""End to end: the real CLI as a subprocess, real corpus clips, the shipped model, a real mosquitto.

One stream is made of EmoDB clips of one speaker, angry then sad (a known emotion change); a subscriber
checks availability, states, segments and the shift event against the payload schema (edge_ser.events).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from broker import Mosquitto, Subscriber, wait_until

from edge_ser.events import validate_payload

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODEL = ROOT / "models" / "default"
ANGRY = ["emodb/wav/08a01Wa.opus", "emodb/wav/08a01Wc.opus", "emodb/wav/08a02Wc.opus", "emodb/wav/08a04Wc.opus"]
SAD = ["emodb/wav/08a02Tb.opus", "emodb/wav/08a04Tb.opus", "emodb/wav/08a05Ta.opus", "emodb/wav/08a07Ta.opus"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL / "model.json").is_file(), reason="no trained model in models/default"),
]


def _joined_stream(tmp_path: Path) -> tuple[Path, float]:
    """angry clips then sad clips of EmoDB speaker 08 with 0.3 s pauses; returns the path and the boundary."""
    missing = [p for p in ANGRY + SAD if not (DATA / p).is_file()]
    if missing:
        pytest.skip(f"corpus clips not available under {DATA}: {missing[:2]}")
    pieces, boundary, t = [], 0.0, 0.0
    for index, rel in enumerate(ANGRY + SAD):
        audio, rate = sf.read(DATA / rel, dtype="float32")
        assert rate == 16_000
        if index == len(ANGRY):
            boundary = t
        pieces += [np.zeros(4800, np.float32), audio]
        t += 0.3 + len(audio) / rate
    path = tmp_path / "angry_then_sad.wav"
    sf.write(path, np.concatenate(pieces), 16_000)
    return path, boundary


def _config(tmp_path: Path, broker: Mosquitto, audio: Path, realtime: bool) -> Path:
    config = {
        "device_id": "e2e",
        "sources": [{"type": "file", "id": "call-1", "path": str(audio), "realtime": realtime}],
        "publisher": {"type": "mqtt", "host": broker.host, "port": broker.port, "prefix": "test",
                      "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                      "spool": {"path": str(tmp_path / "spool.sqlite3")}},
        "stats": {"interval_s": 1.0},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start_agent(config: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edge_ser", "run", "--config", str(config)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stream_payloads(sub: Subscriber) -> list[tuple[str, dict, bool]]:
    out = []
    for msg in sub.received():
        if msg.topic.startswith("test/e2e/call-1/"):
            out.append((msg.topic.rsplit("/", 1)[1], json.loads(msg.payload), msg.retain))
    return out


def test_replay_publishes_schema_valid_states_segments_and_the_shift(tmp_path: Path, mosquitto: Mosquitto) -> None:
    audio, boundary = _joined_stream(tmp_path)
    sub = Subscriber(mosquitto, "test/#").start()
    agent = _start_agent(_config(tmp_path, mosquitto, audio, realtime=False))
    try:
        output, _ = agent.communicate(timeout=120)
    finally:
        agent.kill()
    assert agent.returncode == 0, output
    assert wait_until(lambda: b"offline" in sub.payloads("test/e2e/availability"), 10), sub.received()
    sub.stop()
    assert sub.payloads("test/e2e/availability")[0] == b"online"
    payloads = _stream_payloads(sub)
    for _, payload, _ in payloads:
        validate_payload(payload)
    kinds = [p["type"] for _, p, _ in payloads]
    assert kinds[0] == "stream_status" and payloads[0][1]["status"] == "online"
    assert kinds[-1] == "stream_status" and payloads[-1][1]["status"] == "ended"
    assert "segment_start" in kinds and "segment_end" in kinds
    ends = {p["segment_id"]: p["t"] for _, p, _ in payloads if p["type"] == "segment_end"}
    utterances = [p for _, p, _ in payloads if p["type"] == "utterance"]
    assert utterances and {u["segment_id"] for u in utterances} <= set(ends)  # one per scored segment
    for u in utterances:  # published once the segment is over, with the emotion of its windows
        assert u["end"] <= ends[u["segment_id"]] + 1e-3 and u["label"] == max(u["probs"], key=u["probs"].get)
    states = [p for _, p, _ in payloads if p["type"] == "state"]
    assert len(states) >= 10
    assert [s["t"] for s in states] == sorted(s["t"] for s in states)
    shifts = [p for _, p, _ in payloads if p["type"] == "shift"]
    to_sad = [s for s in shifts if s["from"] == "angry" and s["to"] == "sad"]
    assert to_sad, f"no angry -> sad shift; shifts: {shifts}"
    assert abs(to_sad[0]["t"] - boundary) < 4.0, (to_sad[0]["t"], boundary)
    seqs = [p["seq"] for _, p, _ in payloads]
    assert seqs == list(range(1, len(seqs) + 1))


def test_broker_restarted_mid_replay_loses_nothing_and_keeps_order(tmp_path: Path, mosquitto_factory) -> None:
    broker: Mosquitto = mosquitto_factory(persistence=True)
    audio, _ = _joined_stream(tmp_path)
    sub = Subscriber(broker, "test/#", client_id="e2e-sub", clean_session=False).start()
    agent = _start_agent(_config(tmp_path, broker, audio, realtime=True))
    try:
        assert sub.wait_for(lambda msgs: sum(m.topic.endswith("/state") for m in msgs) >= 3, 30)
        broker.kill()  # SIGKILL: the agent's connection breaks without a goodbye
        time.sleep(3.0)  # the agent keeps hearing and spooling meanwhile
        broker.start()
        output, _ = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGKILL)
    assert agent.returncode == 0, output
    assert wait_until(lambda: any(p[1].get("status") == "ended" for p in _stream_payloads(sub)), 20)
    sub.stop()
    first_arrival: dict[str, int] = {}
    for _, payload, _ in _stream_payloads(sub):
        first_arrival.setdefault(payload["id"], payload["seq"])
    seqs = list(first_arrival.values())
    produced = max(seqs)
    print(f"produced {produced}, delivered {len(first_arrival)}, received {len(_stream_payloads(sub))}")
    assert sorted(seqs) == list(range(1, produced + 1)), "a message was lost"
    assert seqs == sorted(seqs), "messages arrived out of order"


def test_sigterm_finishes_in_flight_work_publishes_offline_and_exits_0(tmp_path: Path, mosquitto: Mosquitto) -> None:
    audio, _ = _joined_stream(tmp_path)
    sub = Subscriber(mosquitto, "test/#").start()
    agent = _start_agent(_config(tmp_path, mosquitto, audio, realtime=True))
    try:
        assert sub.wait_for(lambda msgs: sum(m.topic.endswith("/state") for m in msgs) >= 2, 30)
        agent.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        output, _ = agent.communicate(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, output
    print(f"stopped {took:.2f} s after SIGTERM")
    assert wait_until(lambda: sub.payloads("test/e2e/availability")[-1:] == [b"offline"], 10)
    statuses = [p for topic, p, _ in _stream_payloads(sub) if topic == "status"]
    assert statuses[-1]["status"] == "ended" and statuses[-1]["detail"] == "agent stopping"
    sub.stop()


def test_the_agent_writes_no_audio_to_disk(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Raw audio is never written unless the operator asks: a whole replay run (working directory, HOME and
    TMPDIR all fresh) leaves exactly one new file, the MQTT spool, and it holds JSON messages only."""
    audio, _ = _joined_stream(tmp_path)
    config = _config(tmp_path, mosquitto, audio, realtime=False)
    work, home, tmp = (tmp_path / name for name in ("work", "home", "tmp"))
    for folder in (work, home, tmp):
        folder.mkdir()
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    cache = os.environ.get("EDGE_SER_CACHE") or str(Path.home() / ".cache" / "edge-ser")  # the Whisper base
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "EDGE_SER_CACHE": cache}
    proc = subprocess.run([sys.executable, "-m", "edge_ser", "run", "--config", str(config)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    created = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    spool = tmp_path / "spool.sqlite3"
    assert {p for p in created if not p.name.startswith("spool.sqlite3")} == set(), created
    with sqlite3.connect(spool) as db:
        kinds = {kind for (kind,) in db.execute("SELECT DISTINCT kind FROM messages")}
    assert kinds <= {"state", "event", "segment", "stream_status", "stats", "availability"}
