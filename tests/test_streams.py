"""Shift-stream builder on real corpus clips: reproducibility, one speaker, alternating labels, timing."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainer.streams import DEFAULT_LABELS, StreamBuildConfig, build_streams, main, max_alternating

DATA = Path("/work/shared/data")
MANIFEST = DATA / "manifest.csv"

pytestmark = pytest.mark.skipif(not MANIFEST.is_file(), reason=f"corpus manifest {MANIFEST} not present")


def build(out: Path, seed: int, n: int = 2) -> list[Path]:
    return build_streams(MANIFEST, out, StreamBuildConfig(n=n, seed=seed))


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, str]]:
    with MANIFEST.open(newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def seed0(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build(tmp_path_factory.mktemp("seed0"), seed=0)


def test_same_seed_gives_identical_bytes(seed0: list[Path], tmp_path: Path) -> None:
    again = build(tmp_path, seed=0)
    assert [p.name for p in again] == [p.name for p in seed0] == ["stream_000.json", "stream_001.json"]
    for a, b in zip(seed0, again, strict=True):
        assert a.read_bytes() == b.read_bytes()
        wav = json.loads(a.read_text())["audio"]
        assert (a.parent / wav).read_bytes() == (b.parent / wav).read_bytes()


def test_a_stream_does_not_depend_on_how_many_are_built(seed0: list[Path], tmp_path: Path) -> None:
    (first,) = build(tmp_path, seed=0, n=1)
    assert first.read_bytes() == seed0[0].read_bytes()


def test_another_seed_gives_other_streams(seed0: list[Path], tmp_path: Path) -> None:
    other = build(tmp_path, seed=1)
    for a, b in zip(seed0, other, strict=True):
        assert json.loads(a.read_text())["intervals"] != json.loads(b.read_text())["intervals"]
        assert (a.with_suffix(".wav")).read_bytes() != (b.with_suffix(".wav")).read_bytes()


def test_stream_content_matches_its_ground_truth(seed0: list[Path], rows: dict[str, dict[str, str]]) -> None:
    for path in seed0:
        truth = json.loads(path.read_text())
        intervals = truth["intervals"]
        assert 4 <= len(intervals) <= 8
        # One speaker, labels from the set, never the same label twice in a row.
        speakers = {rows[iv["source"]]["speaker"] for iv in intervals}
        assert speakers == {truth["speaker"]}
        assert all(rows[iv["source"]]["emotion"] == iv["label"] for iv in intervals)
        labels = [iv["label"] for iv in intervals]
        assert set(labels) <= set(DEFAULT_LABELS)
        assert all(a != b for a, b in itertools.pairwise(labels))
        assert len({iv["source"] for iv in intervals}) == len(intervals)  # no clip twice
        # Gaps of 0.2-1.0 s, a boundary at the start of every clip after the first.
        gaps = [b["start"] - a["end"] for a, b in itertools.pairwise(intervals)]
        assert all(0.2 - 1e-4 <= g <= 1.0 + 1e-4 for g in gaps)
        assert truth["boundaries"] == [iv["start"] for iv in intervals[1:]]
        # The intervals cover the audio exactly, and each clip keeps its length.
        info = sf.info(path.parent / truth["audio"])
        assert (info.samplerate, info.channels) == (16000, 1) == (truth["sample_rate"], 1)
        assert intervals[0]["start"] == 0.0
        assert intervals[-1]["end"] == pytest.approx(info.frames / 16000, abs=1e-6)
        assert truth["duration_s"] == pytest.approx(info.frames / 16000, abs=1e-6)
        for iv in intervals:
            clip_s = sf.info(DATA / iv["source"]).duration
            assert iv["end"] - iv["start"] == pytest.approx(clip_s, abs=0.02)


def test_gaps_hold_quiet_noise(seed0: list[Path]) -> None:
    truth = json.loads(seed0[0].read_text())
    audio, rate = sf.read(seed0[0].parent / truth["audio"], dtype="float32")
    a, b = truth["intervals"][0], truth["intervals"][1]
    gap = audio[round(a["end"] * rate) + 10 : round(b["start"] * rate) - 10]
    level = 20 * np.log10(np.sqrt(np.mean(gap.astype(np.float64) ** 2)))
    assert -53.0 < level < -47.0


def test_index_file_and_cli(tmp_path: Path) -> None:
    assert main(["--manifest", str(MANIFEST), "--out", str(tmp_path), "--n", "1", "--seed", "3",
                 "--corpus", "emodb", "--labels", "happy", "sad", "angry", "--quiet"]) == 0
    index = json.loads((tmp_path / "streams.json").read_text())
    assert index["streams"] == ["stream_000.json"]
    assert index["config"]["labels"] == ["happy", "sad", "angry"]
    truth = json.loads((tmp_path / "stream_000.json").read_text())
    assert truth["corpus"] == "emodb"
    assert {iv["label"] for iv in truth["intervals"]} <= {"happy", "sad", "angry"}
    assert main(["--manifest", str(MANIFEST), "--out", str(tmp_path), "--min-clips", "9", "--quiet"]) == 2


def test_clear_errors(tmp_path: Path, rows: dict[str, dict[str, str]]) -> None:
    bad = tmp_path / "no_speaker_column.csv"
    bad.write_text("path,corpus,emotion\nx.opus,c,happy\n")
    with pytest.raises(ValueError, match="speaker"):
        build_streams(bad, tmp_path / "out", StreamBuildConfig(n=1))
    # One speaker with a single label cannot make a stream with changing emotions.
    one = [r for r in rows.values() if r["speaker"] == "emodb_03" and r["emotion"] == "angry"][:5]
    assert len(one) == 5
    small = tmp_path / "one_label.csv"
    with small.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(one[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(DATA / r["path"])} for r in one)
    with pytest.raises(ValueError, match="no speaker has clips of at least 2 of the labels"):
        build_streams(small, tmp_path / "out", StreamBuildConfig(n=1))
    with pytest.raises(ValueError, match="not in the manifest"):
        build_streams(small, tmp_path / "out", StreamBuildConfig(n=1, corpora=("iemocap",)))


def test_max_alternating() -> None:
    assert max_alternating([3, 1]) == 3  # a b a
    assert max_alternating([2, 2]) == 4
    assert max_alternating([5]) == 1
