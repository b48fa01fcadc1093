"""Prometheus metrics served by the real agent while it replays the bundled example."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "models" / "default" / "model.json").is_file(), reason="no model")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _value(text: str, name: str, stream: str | None = None) -> float:
    label = f'{{stream="{stream}"}}' if stream else ""
    match = re.search(rf"^{re.escape(name + label)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{label} not in metrics"
    return float(match.group(1))


def test_metrics_endpoint_reports_stream_progress_and_latency(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "m",
        "sources": [{"type": "file", "id": "ex", "path": str(ROOT / "examples" / "emodb_shifts.opus")}],
        "publisher": {"type": "stdout", "path": str(tmp_path / "out.jsonl")},
        "stats": {"prometheus_port": port},
    }))
    agent = subprocess.Popen([sys.executable, "-m", "edge_ser", "run", "--config", str(config)], cwd=ROOT,
                             env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    text = ""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
            if 'edge_ser_stream_windows_total{stream="ex"}' in text and \
                    _value(text, "edge_ser_stream_windows_total", "ex") >= 3:
                break
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert _value(text, "edge_ser_stream_windows_total", "ex") >= 3
    assert _value(text, "edge_ser_window_latency_seconds_count", "ex") >= 3
    assert 0.5 < _value(text, "edge_ser_stream_speech_ratio", "ex") <= 1.0
    # stream adaptation (on by default; the shipped model carries its reference): the windows scored so far
    # went into the stream's mean, each second of speech once although windows overlap
    windows = _value(text, "edge_ser_stream_windows_total", "ex")
    assert 0.5 <= _value(text, "edge_ser_stream_adapted_seconds", "ex") <= 2.0 * windows
    assert _value(text, "edge_ser_streams_live") == 1
    assert "edge_ser_engine_queue_depth" in text
    assert 50e6 < _value(text, "edge_ser_memory_resident_bytes") < 4e9  # the model alone is ~100 MB
    assert _value(text, "edge_ser_memory_heap_in_use_bytes") > 10e6
