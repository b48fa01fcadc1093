"""SIGHUP reloads the stream list of the real agent: new sources start, removed ones end, the others go on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "emodb_shifts.opus"
pytestmark = pytest.mark.skipif(not (ROOT / "models" / "default" / "model.json").is_file(), reason="no model")


def _write(config: Path, out: Path, ids: list[str]) -> None:
    config.write_text(yaml.safe_dump({
        "device_id": "hup",
        "sources": [{"type": "file", "id": i, "path": str(EXAMPLE), "realtime": True, "loop": True} for i in ids],
        "publisher": {"type": "stdout", "path": str(out)},
    }))


def _statuses(out: Path) -> list[tuple[str, str, str | None]]:
    rows = []
    for line in out.read_text().splitlines() if out.exists() else []:
        payload = json.loads(line)["payload"]
        if isinstance(payload, dict) and payload.get("type") == "stream_status":
            rows.append((payload["stream_id"], payload["status"], payload.get("detail")))
    return rows


def _wait(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_sighup_adds_and_removes_sources_without_touching_the_others(tmp_path: Path) -> None:
    config, out = tmp_path / "agent.yaml", tmp_path / "out.jsonl"
    _write(config, out, ["a"])
    agent = subprocess.Popen([sys.executable, "-m", "edge_ser", "run", "--config", str(config)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: any(s == "a" and st == "online" for s, st, _ in _statuses(out)))
        _write(config, out, ["a", "b"])
        agent.send_signal(signal.SIGHUP)
        assert _wait(lambda: any(s == "b" and st == "online" for s, st, _ in _statuses(out)))
        config.write_text("sources: [{type: file}]\n")  # a broken config is refused, nothing changes
        agent.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        _write(config, out, ["a"])
        agent.send_signal(signal.SIGHUP)
        assert _wait(lambda: ("b", "ended", "removed by configuration reload") in _statuses(out))
        assert not any(s == "a" and st != "online" for s, st, _ in _statuses(out)), _statuses(out)
        assert agent.poll() is None
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    assert "reload refused" in err
    assert ("a", "ended", "agent stopping") in _statuses(out)
