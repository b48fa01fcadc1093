"""Test helper: real speech windows from the shared corpora (shared by the engine parity tests)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from edge_ser.audio import load_audio
from edge_ser.features import log_mel

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOUR = ("neutral", "happy", "sad", "angry")


def real_windows(per_corpus: int = 6) -> list[np.ndarray]:
    """2 s (or shorter) windows of real speech, a few per corpus and label, in a fixed order."""
    manifest = DATA / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not available")
    rows = list(csv.DictReader(manifest.open()))
    picked: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        group = picked.setdefault(row["corpus"], [])
        same_label = sum(r["emotion"] == row["emotion"] for r in group)
        if row["emotion"] in FOUR and len(group) < per_corpus and same_label < 2:
            group.append(row)
    mels = []
    for row in (r for group in picked.values() for r in group):
        audio = load_audio(DATA / row["path"])[:32_000]
        mels.append(log_mel(audio[: len(audio) // 320 * 320]))
    return mels
