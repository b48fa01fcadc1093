"""Delivery under faults: 10 minutes of real speech, the broker stopped and restarted 10 times, the agent
SIGKILLed once (while the broker is down, so its spool holds undelivered messages) and restarted on the
same spool. Every message the agent produced reaches the subscriber
(at least once, in order per stream and run); the test prints produced / delivered / duplicated / lost.

The broker is stopped with SIGTERM, not SIGKILL: mosquitto acknowledges a message before its persistence
saves it, so a SIGKILL in between loses a message the broker already took from the agent (seen at stop 23:
PUBACK m312 sent, then killed before the next save, one seq never delivered). That is the broker's
durability, which no publisher can make up for; what this test measures is the agent's, through broker
outages with messages in flight and through its own SIGKILL.

"Produced" is what the agent made durable: for the run that ended normally, every seq up to its final
``stream_status`` (seqs are contiguous per stream and run); for the run killed with SIGKILL, everything up to
the highest seq that was either delivered before the kill or found waiting in its on-disk spool right after
it (read through :class:`edge_ser.publish.spool.Spool`, the code the restarted agent resends it with).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from broker import Mosquitto, Subscriber, wait_until

from edge_ser.audio import load_audio
from edge_ser.publish.spool import Spool

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODEL = ROOT / "models" / "default"
SPEECH_S = 600.0
SPEED = 10.0
BROKER_KILLS = 10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL / "model.json").is_file(), reason="no trained model in models/default"),
    pytest.mark.skipif(not (DATA / "manifest.csv").is_file(), reason=f"no corpus manifest under {DATA}"),
]


def _ten_minutes_of_speech(path: Path) -> float:
    """Real corpus clips (EmoDB then RAVDESS, in manifest order) joined with 0.3 s pauses, written as FLAC."""
    with open(DATA / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["corpus"] in ("emodb", "ravdess")]
    pieces: list[np.ndarray] = []
    total = 0.0
    for row in rows:
        if total >= SPEECH_S:
            break
        audio = load_audio(DATA / row["path"])
        pieces += [np.zeros(4800, np.float32), audio]
        total += 0.3 + len(audio) / 16_000
    assert total >= SPEECH_S, f"only {total:.0f} s of emodb + ravdess speech under {DATA}"
    sf.write(path, np.concatenate(pieces), 16_000, format="FLAC")
    return total


def _start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "edge_ser", "run", "--config", str(config)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def _run_id(payload: dict) -> str:
    return payload["id"][: -len(f"-{payload['stream_id']}-{payload['seq']}")]


def test_ten_broker_outages_and_an_agent_sigkill_lose_nothing(tmp_path: Path, mosquitto_factory) -> None:
    audio = tmp_path / "ten_minutes.flac"
    speech_s = _ten_minutes_of_speech(audio)
    broker: Mosquitto = mosquitto_factory(persistence=True)
    spool_path = tmp_path / "spool.sqlite3"
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "fault",
        "sources": [{"type": "file", "id": "call-1", "path": str(audio), "realtime": True, "speed": SPEED}],
        "publisher": {"type": "mqtt", "host": broker.host, "port": broker.port, "prefix": "test",
                      "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "spool": {"path": str(spool_path)}},
        "stats": {"interval_s": 2.0},
    }))
    sub = Subscriber(broker, "test/fault/call-1/#", client_id="fault-sub", clean_session=False).start()
    log = tmp_path / "agent.log"
    agent = _start_agent(config, log)
    pending_at_kill: list[dict] = []
    run_time_s = speech_s / SPEED
    try:
        assert sub.wait_for(lambda msgs: sum(m.topic.endswith("/state") for m in msgs) >= 3, 60), log.read_text()
        for kill in range(1, BROKER_KILLS + 1):
            time.sleep(run_time_s / (BROKER_KILLS + 4))
            broker.stop()  # SIGTERM: see the module doc for why not SIGKILL
            time.sleep(0.5 + 0.1 * kill)  # down for 0.6 to 1.5 s while the agent keeps hearing and spooling
            if kill == BROKER_KILLS // 2:  # the agent dies too, with undelivered messages in its spool
                agent.send_signal(signal.SIGKILL)
                agent.wait(10)
                spool = Spool(spool_path, max_messages=1_000_000, max_bytes=1 << 40)
                pending_at_kill = [json.loads(m.message.payload) for m in spool.peek(0, 1_000_000)]
                spool.close()
                assert pending_at_kill, "the broker was down: the spool should hold undelivered messages"
                agent = _start_agent(config, log)
            broker.start()
        assert agent.wait(timeout=run_time_s * 3 + 60) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()

    def received() -> list[dict]:
        return [json.loads(m.payload) for m in sub.received()]

    assert wait_until(lambda: any(p.get("status") == "ended" for p in received()), 20), "no end of stream"
    sub.stop()
    payloads = received()
    by_run: dict[str, list[int]] = defaultdict(list)
    for p in payloads:
        by_run[_run_id(p)].append(p["seq"])
    pending = defaultdict(set)
    for p in pending_at_kill:
        if p.get("stream_id") == "call-1":
            pending[_run_id(p)].add(p["seq"])
    produced = delivered = duplicated = lost = 0
    report = []
    for run, seqs in by_run.items():
        ended = [p["seq"] for p in payloads if _run_id(p) == run and p.get("status") == "ended"]
        top = ended[0] if ended else max(seqs + list(pending[run]))
        first_arrival = list(dict.fromkeys(seqs))
        missing = sorted(set(range(1, top + 1)) - set(first_arrival))
        produced += top
        delivered += len(first_arrival)
        duplicated += len(seqs) - len(first_arrival)
        lost += len(missing)
        report.append(f"run {run}: produced {top}, delivered {len(first_arrival)}, duplicates "
                      f"{len(seqs) - len(first_arrival)}, pending in spool at SIGKILL {len(pending[run])}, "
                      f"missing {missing[:10]}")
        assert first_arrival == sorted(first_arrival), f"run {run}: out of order"
        assert pending[run] <= set(first_arrival), f"run {run}: spooled at SIGKILL but never delivered"
    print(f"\n{speech_s:.0f} s of speech at x{SPEED:g}, broker stopped {BROKER_KILLS} times, agent SIGKILLed once:"
          f" produced {produced}, delivered {delivered}, duplicated {duplicated}, lost {lost}")
    print("\n".join(report))
    assert len(by_run) == 2, f"expected the killed run and its restart, got {report}"
    assert lost == 0, "\n".join(report)
