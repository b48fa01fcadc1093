"""Per-speaker centring of the encoder features: each speaker's mean is moved onto the training mean.

Most of what separates the corpora is an offset per recording setup and speaker (docs/ablations.md: the
pooled-feature probe gains 0.11 LOCO UA when every speaker's features are centred on their own mean). With
``normalize: speaker`` the head reads the normalised encoder features minus ``gamma * (m_s - m_ref)``,
where ``m_s`` is speaker ``s``'s mean over all their clips, ``m_ref`` the mean over the training clips, and
``gamma`` the final LayerNorm's scale. Means are taken in the LayerNorm's *unscaled* space (each frame
standardised over its 512 channels, before ``gamma`` and ``beta``), so they do not move while the LayerNorm
trains, and a runtime that only sees the LayerNorm's output recovers the same shift from its own running mean.

The means use audio only, never labels: a held-out speaker's offset comes from that speaker's clips of every
emotion, so a score with centring is a *speaker-adaptive* figure, not the zero-shot one of the EVAL.md
headline (it assumes a speaker's clips are spread over the emotions, as they are in acted corpora).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from trainer.cache import CachedView
from trainer.data import Clip

LAYER_NORM_EPS = 1e-5


def standardised_mean(states: np.ndarray) -> np.ndarray:
    """Mean over frames of each frame standardised over its channels (LayerNorm without its affine)."""
    x = np.asarray(states, dtype=np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + LAYER_NORM_EPS)
    return x.mean(axis=0)


def clip_means(view: CachedView, indices: Sequence[int]) -> np.ndarray:
    """(N, D) float32: every clip's ``standardised_mean`` of its cached states (rows in ``indices`` order)."""
    out = np.zeros((len(indices), view.states.shape[1]), dtype=np.float32)
    for row, i in enumerate(tqdm(indices, desc="speaker means", unit="clip", mininterval=10, leave=False)):
        out[row] = standardised_mean(view.get(int(i)))
    return out


def speaker_offsets(clips: Sequence[Clip], indices: Sequence[int], means: np.ndarray,
                    reference: np.ndarray) -> np.ndarray:
    """(N, D) offsets, one per clip of ``indices``: its speaker's mean over those of ``indices`` minus
    ``reference``. ``means`` holds the clips' ``standardised_mean`` rows in ``indices`` order."""
    speakers = [clips[i].speaker for i in indices]
    by_speaker: dict[str, list[int]] = {}
    for row, speaker in enumerate(speakers):
        by_speaker.setdefault(speaker, []).append(row)
    speaker_mean = {s: means[rows].mean(axis=0) for s, rows in by_speaker.items()}
    return np.stack([speaker_mean[s] - reference for s in speakers]).astype(np.float32) if speakers else \
        np.zeros((0, means.shape[1]), dtype=np.float32)


STREAM_ORDERS = ("shuffled", "grouped")
FRAMES_PER_S = 50.0  # encoder frames (20 ms)


def stream_offsets(clips: Sequence[Clip], indices: Sequence[int], means: np.ndarray, frames: np.ndarray,
                   reference: np.ndarray, prior_s: float, seed: int, order: str = "shuffled"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Causal per-speaker offsets, as an agent adapting to one speaker's stream would have them.

    Each speaker's clips are replayed in a seeded order (``shuffled``; ``grouped``: all clips of one emotion
    in a row, emotions in a seeded order: the worst case, a speaker who stays in one emotion for long).
    Clip ``j`` is centred on the frame-weighted mean ``m`` of the speaker's *earlier* clips only, shrunk
    toward the reference: offset = ``n / (n + prior) * (m - reference)``, ``n`` the earlier frames, ``prior``
    ``prior_s`` seconds of frames; the speaker's first clip is scored uncentred. Returns the offsets (N, D)
    and each clip's history in seconds (N,), both in ``indices`` order.
    """
    if order not in STREAM_ORDERS:
        raise ValueError(f"stream order must be one of {STREAM_ORDERS}, got {order!r}")
    if prior_s < 0:
        raise ValueError(f"prior_s must be >= 0 seconds, got {prior_s}")
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[int]] = {}
    for row, i in enumerate(indices):
        by_speaker.setdefault(clips[i].speaker, []).append(row)
    offsets = np.zeros((len(indices), means.shape[1]), dtype=np.float32)
    history = np.zeros(len(indices), dtype=np.float64)
    prior = prior_s * FRAMES_PER_S
    for speaker in sorted(by_speaker):
        rows = [by_speaker[speaker][k] for k in rng.permutation(len(by_speaker[speaker]))]
        if order == "grouped":
            emotions = sorted({clips[indices[r]].emotion for r in rows})
            rank = {e: k for k, e in enumerate(emotions[k] for k in rng.permutation(len(emotions)))}
            rows.sort(key=lambda r: rank[clips[indices[r]].emotion])
        total = np.zeros(means.shape[1], dtype=np.float64)
        seen = 0.0
        for r in rows:
            if seen > 0:
                offsets[r] = seen / (seen + prior) * (total / seen - reference)
            history[r] = seen / FRAMES_PER_S
            total += means[r] * float(frames[r])
            seen += float(frames[r])
    return offsets, history
