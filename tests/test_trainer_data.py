"""Manifest validation (every problem with its line number), --skip-bad, filters and speaker splits."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from trainer.data import ManifestError, load_manifest, select, speaker_split

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HEADER = ["path", "corpus", "language", "speaker", "gender", "emotion_original", "emotion", "intensity", "text_id",
          "duration_s"]


@pytest.fixture(scope="module")
def real_rows() -> list[dict[str, str]]:
    manifest = DATA / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not available")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_corpus: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_corpus.setdefault(row["corpus"], []).append(row)
    return [row for corpus in sorted(by_corpus) for row in by_corpus[corpus][::400][:4]]


def write(folder: Path, rows: list[dict[str, str]], header: list[str] = HEADER) -> Path:
    (folder / "data").symlink_to(DATA)
    path = folder / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": "data/" + row["path"]} if not row["path"].startswith("missing") else row)
    return path


def test_valid_manifest_loads_with_absolute_paths(tmp_path: Path, real_rows: list[dict[str, str]]) -> None:
    manifest = load_manifest(write(tmp_path, real_rows))
    assert len(manifest) == len(real_rows)
    assert all(c.path.is_absolute() and c.path.is_file() for c in manifest.clips)
    assert manifest.clips[0].line == 2
    assert manifest.corpora == sorted({r["corpus"] for r in real_rows})
    assert len(manifest.audio_key()) == 16


def test_the_audio_key_follows_the_clips_bytes_not_their_paths_or_times(tmp_path: Path,
                                                                          real_rows: list[dict[str, str]]) -> None:
    rows = real_rows[:3]
    key = load_manifest(write(tmp_path, rows)).audio_key()
    copy = tmp_path / "copy"
    for row in rows:
        target = copy / "data" / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / row["path"], target)
        os.utime(target, (1_000_000_000, 1_000_000_000))
    manifest = copy / "manifest.csv"
    shutil.copyfile(tmp_path / "manifest.csv", manifest)
    assert load_manifest(manifest).audio_key() == key  # elsewhere, other times: the same caches
    with (copy / "data" / rows[1]["path"]).open("ab") as handle:
        handle.write(b"\0")
    assert load_manifest(manifest).audio_key() != key  # one byte more in one clip: caches built anew


def test_missing_columns_are_named(tmp_path: Path, real_rows: list[dict[str, str]]) -> None:
    header = [h for h in HEADER if h not in ("speaker", "emotion")]
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, real_rows, header))
    assert "missing columns ['speaker', 'emotion']" in str(info.value)


def test_every_bad_row_is_reported_with_its_line(tmp_path: Path, real_rows: list[dict[str, str]]) -> None:
    rows = [dict(r) for r in real_rows[:6]]
    rows[1]["path"] = "missing/nothing.opus"          # line 3: missing file
    rows[2]["emotion"] = "jealous"                    # line 4: unknown label
    rows[3]["speaker"] = ""                           # line 5: empty field
    rows.append(dict(real_rows[0]))                   # line 8: duplicate of line 2
    rows[4]["duration_s"] = "long"                    # line 6: bad duration
    path = write(tmp_path, rows)
    known = {"neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "other"}
    with pytest.raises(ManifestError) as info:
        load_manifest(path, label_known=lambda c, e, o: e in known)
    text = str(info.value)
    lines = sorted(p.line for p in info.value.problems)
    assert lines == [3, 4, 5, 6, 8]
    assert "line 3: file 'missing/nothing.opus' not found" in text
    assert "line 4: label 'jealous'" in text
    assert "line 5: empty 'speaker'" in text
    assert "line 6: duration_s 'long' is not a number" in text
    assert "line 8: duplicate of line 2" in text
    assert "--skip-bad" in text
    skipped = load_manifest(path, skip_bad=True, label_known=lambda c, e, o: e in known)
    assert len(skipped) == 2
    assert [c.line for c in skipped.clips] == [2, 7]
    assert len(skipped.skipped) == 5


def test_select_and_speaker_disjoint_split(tmp_path: Path, real_rows: list[dict[str, str]]) -> None:
    manifest = load_manifest(write(tmp_path, real_rows))
    clips = manifest.clips
    some = select(clips, exclude=["tess"])
    assert all(clips[i].corpus != "tess" for i in some)
    with pytest.raises(ValueError, match="not in the manifest"):
        select(clips, include=["nowhere"])
    train, dev = speaker_split(clips, range(len(clips)), dev_fraction=0.5, min_speakers=2, seed=0)
    assert sorted(train + dev) == list(range(len(clips)))
    assert dev
    train_speakers = {(clips[i].corpus, clips[i].speaker) for i in train}
    assert not train_speakers & {(clips[i].corpus, clips[i].speaker) for i in dev}
    assert speaker_split(clips, range(len(clips)), 0.5, 2, seed=0) == (train, dev)
