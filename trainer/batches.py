"""Training batches: per-epoch shuffled length-sorted batches (DDP-sharded), cached-state batches, and the
on-the-fly audio dataset used without a cache."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edge_ser.audio import AudioError
from edge_ser.features import DEFAULT_PARAMS, FeatureParams
from edge_ser.types import SAMPLE_RATE
from trainer.augment import Augmenter
from trainer.cache import CacheSet, pad_mels, prepare_mel
from trainer.data import Clip, read_clip

log = logging.getLogger(__name__)


def epoch_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, rank: int = 0,
                  world: int = 1) -> list[np.ndarray]:
    """Shuffled batches of positions with similar lengths (sorted within pools of 50 batches); under DDP each
    rank gets every ``world``-th batch of the same list, truncated so all ranks step equally often."""
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches: list[np.ndarray] = []
    for first in range(0, len(order), pool):
        members = order[first : first + pool]
        members = members[np.argsort(lengths[members], kind="stable")]
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) // world * world if world > 1 else len(batches)
    return batches[rank:usable:world]


class AudioDataset(torch.utils.data.Dataset[Any]):
    """On-the-fly training views (no cache): decode, augment, log-mel, SpecAugment."""

    def __init__(self, clips: Sequence[Clip], augmenter: Augmenter | None, max_clip_s: float, seed: int,
                 skip_bad: bool, params: FeatureParams = DEFAULT_PARAMS) -> None:
        self.clips = list(clips)
        self.augmenter = augmenter
        self.max_samples = int(max_clip_s * SAMPLE_RATE)
        self.seed = seed
        self.skip_bad = skip_bad
        self.epoch = 0
        self.params = params

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, position: int) -> tuple[int, np.ndarray] | None:
        rng = np.random.default_rng([self.seed, self.epoch, position, 1])
        try:
            audio = read_clip(self.clips[position])
            return position, prepare_mel(audio, rng, self.augmenter, self.max_samples, self.params)
        except (AudioError, ValueError) as exc:
            if not self.skip_bad:
                raise
            log.warning("skipping clip (line %d): %s", self.clips[position].line, exc)
            return None


def collate_mels(items: list[tuple[int, np.ndarray] | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kept = [item for item in items if item is not None]
    if not kept:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    x, frames = pad_mels([mel for _, mel in kept])
    return torch.tensor([p for p, _ in kept]), x, frames


def cached_batch(cache: CacheSet, indices: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = [cache.views[int(v)].get(int(i)) for i, v in zip(indices, views, strict=True)]
    lengths = [len(s) for s in chosen]
    states = np.zeros((len(chosen), max(lengths), chosen[0].shape[1]), dtype=np.float32)
    for row, s in enumerate(chosen):
        states[row, : len(s)] = s
    return torch.from_numpy(states), torch.tensor(lengths)
