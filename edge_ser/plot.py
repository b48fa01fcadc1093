"""PNG timeline of a replay: class probabilities over time, the dominant-emotion band, reported shifts,
speech segments, the final label of each utterance and, when given, the ground truth of a shift stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_COLORS = {
    "neutral": "#9e9e9e", "happy": "#f4b400", "sad": "#4285f4", "angry": "#db4437", "fearful": "#8e44ad",
    "disgust": "#2e7d32", "surprised": "#ff7f0e", "other": "#795548", "uncertain": "#ffffff",
}


def plot_timeline(states: list[dict[str, Any]], shifts: list[dict[str, Any]], out: str | Path, *,
                  truth: list[dict[str, Any]] | None = None, segments: list[dict[str, Any]] | None = None,
                  title: str = "") -> Path:
    """Draw the replay to ``out`` (PNG) and return its path."""
    labels = list(states[0]["probs"]) if states else list(_COLORS)[:8]
    utterances = [seg for seg in segments or [] if seg["type"] == "utterance"]
    bands: list[tuple[str, list[tuple[float, float, str]]]] = [
        ("reported", [(s["t"], states[i + 1]["t"] if i + 1 < len(states) else s["t"] + 1.0, s["dominant"])
                      for i, s in enumerate(states)])]
    if utterances:
        bands.append(("utterances", [(u["start"], u["end"], u["label"]) for u in utterances]))
    if truth:
        bands.append(("truth", [(x["start"], x["end"], x["label"]) for x in truth]))
    rows = 1 + len(bands)
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.2 + 1.4 * rows), sharex=True,
                             gridspec_kw={"height_ratios": [4] + [0.6] * (rows - 1)})
    ax = axes[0]
    times = [s["t"] for s in states]
    for label in labels:
        ax.plot(times, [s["probs"][label] for s in states], label=label, color=_COLORS.get(label), lw=1.6)
    for seg in segments or []:
        if seg["type"] == "segment_start":
            ax.axvline(seg["t"], color="#cccccc", lw=0.8, ls=":")
    for shift in shifts:
        ax.axvline(shift["t"], color="black", lw=1.2, ls="--")
        ax.text(shift["t"], 1.02, f"{shift['from']}→{shift['to']}", rotation=0, fontsize=8, ha="center",
                va="bottom", transform=ax.get_xaxis_transform())
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.legend(ncol=min(len(labels), 8), fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, pad=18)
    for band, (name, spans) in zip(axes[1:], bands, strict=True):
        band.set_yticks([])
        band.set_ylabel(name, rotation=0, ha="right", va="center")
        for start, end, label in spans:
            band.axvspan(start, end, color=_COLORS.get(label, "#000000"), lw=0)
            if name != "reported":
                band.text((start + end) / 2, 0.5, label, ha="center", va="center", fontsize=8)
    axes[-1].set_xlabel("stream time (s)")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
