"""The command line as a user meets it: config validation messages, refusal without a model, replay + plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def edge_ser(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_ser", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("name", ["replay.yaml", "kiosk.yaml", "callcenter.yaml"])
def test_shipped_agent_configs_validate(name: str) -> None:
    config = ROOT / "configs" / name
    result = edge_ser("validate-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_bad_config_names_line_field_value_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: kiosk\nsources:\n  - type: file\n    id: a\n    path: x.wav\n    block_s: -1\n"
                   "  - type: mic\n    id: a\nengine:\n  type: ctranslate2\n  compute_type: int4\nsurprise: 1\n")
    result = edge_ser("validate-config", str(bad))
    assert result.returncode == 2
    err = result.stderr
    assert f"{bad}:6: sources.0.block_s: Input should be greater than or equal to 0.01 (got -1)" in err
    assert f"{bad}:11: engine.compute_type:" in err and "'int4'" in err
    assert "surprise: Extra inputs are not permitted" in err


def test_duplicate_stream_ids_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "dupes.yaml"
    config.write_text("sources:\n  - {type: file, id: a, path: x.wav}\n  - {type: stdin, id: a}\n")
    result = edge_ser("validate-config", str(config))
    assert result.returncode == 2
    assert "stream ids must be unique, repeated: ['a']" in result.stderr


def test_agent_refuses_to_start_without_a_trained_model(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"model:\n  path: {tmp_path / 'nothing'}\nsources:\n  - type: file\n    id: a\n"
                      f"    path: {ROOT / 'examples' / 'emodb_shifts.opus'}\n")
    result = edge_ser("run", "--config", str(config))
    assert result.returncode == 1
    assert "no trained emotion model" in result.stderr and "never runs a random" in result.stderr


@pytest.mark.skipif(not (ROOT / "models" / "default" / "model.json").is_file(), reason="no shipped model")
def test_replay_prints_a_timeline_and_draws_it(tmp_path: Path) -> None:
    png = tmp_path / "timeline.png"
    result = edge_ser("replay", str(ROOT / "examples" / "emodb_shifts.opus"), "--plot", str(png),
                      "--truth", str(ROOT / "examples" / "emodb_shifts.json"))
    assert result.returncode == 0, result.stderr
    assert "SHIFT angry -> sad" in result.stdout  # the clearest change in the example, for any decent model
    assert "speech starts" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_replay_of_a_corrupt_file_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.opus"
    broken.write_bytes(b"OggS" + bytes(200))
    result = edge_ser("replay", str(broken))
    assert result.returncode == 1
    assert "broken.opus" in result.stderr and "unimplemented format" in result.stderr
