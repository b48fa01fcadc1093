"""Manifests (EVAL.md format), their validation, corpus filters, speaker-disjoint splits and clip audio.

A manifest is a CSV with one row per clip; ``path`` is relative to the manifest's folder (WAV, FLAC or
Ogg/Opus). ``load_manifest`` checks everything cheap before anything heavy runs: missing columns (named),
empty fields, missing files, labels the label map cannot place, bad durations and duplicate rows; all
problems are reported together with their line numbers. With ``skip_bad`` the bad rows are dropped and
counted instead. Empty or undecodable audio is found later, when the clip is first decoded (trainer/cache.py).
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_ser.audio import load_audio

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "corpus", "speaker", "emotion")
OPTIONAL_COLUMNS = ("language", "gender", "emotion_original", "intensity", "text_id", "duration_s")
ENCODER_HOP = 320
"""Samples per encoder frame (two 10 ms mel frames): clips are trimmed to a multiple of this."""
MAX_REPORTED = 50


@dataclass(frozen=True, slots=True)
class Clip:
    """One manifest row that passed validation."""

    line: int  # line number in the CSV file (the header is line 1)
    path: Path  # absolute
    corpus: str
    speaker: str
    emotion: str
    emotion_original: str = ""
    language: str = ""
    duration_s: float | None = None

    @property
    def label_key(self) -> tuple[str, str, str]:
        return (self.corpus, self.emotion, self.emotion_original)


@dataclass(frozen=True, slots=True)
class Problem:
    """A manifest row that cannot be used, and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ManifestError(ValueError):
    """The manifest cannot be used; ``problems`` lists every bad row with its line number."""

    def __init__(self, path: Path, problems: Sequence[Problem], hint: str = "") -> None:
        self.path = path
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems[:MAX_REPORTED])
        more = f"\n  ... and {len(self.problems) - MAX_REPORTED} more" if len(self.problems) > MAX_REPORTED else ""
        super().__init__(f"{path}: {len(self.problems)} bad rows{hint}:\n  {shown}{more}")


@dataclass
class Manifest:
    """The usable clips of a manifest, and the rows skipped with ``skip_bad``."""

    path: Path
    clips: list[Clip]
    skipped: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def corpora(self) -> list[str]:
        return sorted({c.corpus for c in self.clips})

    def audio_key(self) -> str:
        """Hash of what the audio caches depend on: every clip's bytes, in order. Content, not paths or
        modification times, so a copy of the same corpora elsewhere (a fresh checkout, a CI machine) finds the
        caches built from them, and a changed file does not."""
        digest = hashlib.sha256()
        for clip in self.clips:
            with clip.path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        return digest.hexdigest()[:16]


def load_manifest(path: str | Path, skip_bad: bool = False,
                  label_known: Callable[[str, str, str], bool] | None = None,
                  check_files: bool = True) -> Manifest:
    """Read and validate a manifest; raise ``ManifestError`` listing every bad row unless ``skip_bad``.

    ``label_known(corpus, emotion, emotion_original)`` says whether the label map can place a label.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    root = path.resolve().parent
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(path, [Problem(1, f"missing columns {missing}; the header has {columns}, "
                                                  f"expected at least {list(REQUIRED_COLUMNS)}")])
        rows = [(index + 2, row) for index, row in enumerate(reader)]
    clips: list[Clip] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        clip, issues = _parse_row(line, row, root, seen, label_known, check_files)
        if issues:
            problems.extend(Problem(line, msg) for msg in issues)
        elif clip is not None:
            clips.append(clip)
    if problems and not skip_bad:
        raise ManifestError(path, problems, hint=" (pass --skip-bad to drop them)")
    if problems:
        bad_lines = len({p.line for p in problems})
        log.warning("%s: skipped %d bad rows of %d (%s)", path, bad_lines, len(rows), problems[0])
    if not clips:
        raise ManifestError(path, problems or [Problem(1, "no rows")], hint=": no usable clips")
    return Manifest(path=path, clips=clips, skipped=problems)


def _parse_row(line: int, row: dict[str, str | None], root: Path, seen: dict[str, int],
               label_known: Callable[[str, str, str], bool] | None,
               check_files: bool) -> tuple[Clip | None, list[str]]:
    value = {k: (row.get(k) or "").strip() for k in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
    issues = [f"empty {k!r}" for k in REQUIRED_COLUMNS if not value[k]]
    if None in row:
        issues.append(f"{len(row[None] or [])} more fields than the header has")  # type: ignore[index]
    if issues:
        return None, issues
    relative = value["path"]
    first = seen.get(relative)
    if first is not None:
        return None, [f"duplicate of line {first} (path {relative!r})"]
    seen[relative] = line
    full = (root / relative).resolve()
    if check_files and not full.is_file():
        issues.append(f"file {relative!r} not found (looked for {full})")
    if label_known is not None and not label_known(value["corpus"], value["emotion"], value["emotion_original"]):
        issues.append(f"label {value['emotion']!r} (emotion_original {value['emotion_original']!r}) is not in "
                      "the label map")
    duration: float | None = None
    if value["duration_s"]:
        try:
            duration = float(value["duration_s"])
        except ValueError:
            issues.append(f"duration_s {value['duration_s']!r} is not a number")
        else:
            if not duration > 0:
                issues.append(f"duration_s {duration} is not positive")
    if issues:
        return None, issues
    return Clip(line=line, path=full, corpus=value["corpus"], speaker=value["speaker"], emotion=value["emotion"],
                emotion_original=value["emotion_original"], language=value["language"], duration_s=duration), []


def select(clips: Sequence[Clip], include: Iterable[str] | None = None,
           exclude: Iterable[str] = ()) -> list[int]:
    """Indices of clips whose corpus is in ``include`` (all when None) and not in ``exclude``."""
    wanted = None if include is None else set(include)
    dropped = set(exclude)
    known = {c.corpus for c in clips}
    unknown = sorted(((wanted or set()) | dropped) - known)
    if unknown:
        raise ValueError(f"corpora {unknown} are not in the manifest (it has {sorted(known)})")
    return [i for i, c in enumerate(clips) if (wanted is None or c.corpus in wanted) and c.corpus not in dropped]


def speaker_split(clips: Sequence[Clip], indices: Sequence[int], dev_fraction: float = 0.1,
                  min_speakers: int = 4, seed: int = 0) -> tuple[list[int], list[int]]:
    """Speaker-disjoint (train, dev) split of ``indices``: per corpus, ``round(dev_fraction * speakers)``
    speakers (at least one when the corpus has ``min_speakers`` or more) go to dev; corpora with fewer
    speakers stay whole in train."""
    rng = np.random.default_rng(seed)
    by_corpus: dict[str, list[str]] = {}
    for i in indices:
        speakers = by_corpus.setdefault(clips[i].corpus, [])
        if clips[i].speaker not in speakers:
            speakers.append(clips[i].speaker)
    dev_speakers: set[tuple[str, str]] = set()
    for corpus in sorted(by_corpus):
        speakers = sorted(by_corpus[corpus])
        count = round(dev_fraction * len(speakers))
        if count == 0 and len(speakers) >= min_speakers and dev_fraction > 0:
            count = 1
        chosen = rng.permutation(len(speakers))[:count]
        dev_speakers.update((corpus, speakers[j]) for j in chosen)
    train = [i for i in indices if (clips[i].corpus, clips[i].speaker) not in dev_speakers]
    dev = [i for i in indices if (clips[i].corpus, clips[i].speaker) in dev_speakers]
    return train, dev


def trim_to_hop(audio: np.ndarray, hop: int = ENCODER_HOP) -> np.ndarray:
    """Drop trailing samples so the length is a multiple of ``hop`` (an even number of mel frames)."""
    return audio[: len(audio) // hop * hop]


def crop(audio: np.ndarray, max_samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """At most ``max_samples`` samples: a random window when ``rng`` is given, else the centre."""
    if len(audio) <= max_samples:
        return audio
    start = int(rng.integers(0, len(audio) - max_samples + 1)) if rng is not None else (len(audio) - max_samples) // 2
    return audio[start : start + max_samples]


def read_clip(clip: Clip) -> np.ndarray:
    """Decode a clip to 16 kHz mono float32 (``edge_ser.audio.load_audio``; raises ``AudioError``)."""
    return load_audio(clip.path)
