"""Random crops, mixup and speaker shifts of training batches, and which epochs a snapshot run keeps (pure
logic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainer.cache import valid_mask
from trainer.regularize import mixup, random_crop, speaker_shift
from trainer.train import _keep_snapshot


def _valid(counts: list[int], width: int) -> torch.Tensor:
    return valid_mask(torch.tensor(counts), width)


def test_crop_off_returns_the_mask_itself() -> None:
    valid = _valid([10, 60, 120], 120)
    assert random_crop(valid, np.random.default_rng(0), 0.0, 50) is valid


def test_crops_are_one_span_inside_the_clip_and_at_least_the_minimum() -> None:
    counts = [30, 50, 51, 80, 200, 200, 200, 200]
    valid = _valid(counts, 200)
    lengths = []
    for seed in range(20):
        cropped = random_crop(valid, np.random.default_rng(seed), 1.0, 50)
        for row, n in enumerate(counts):
            kept = cropped[row].nonzero().flatten().tolist()
            if n <= 50:  # too short to crop: unchanged
                assert torch.equal(cropped[row], valid[row])
                continue
            assert kept == list(range(kept[0], kept[-1] + 1))  # contiguous
            assert kept[-1] < n and 50 <= len(kept) <= n
            lengths.append(len(kept))
    assert min(lengths) < 100 and max(lengths) > 150  # the span length varies over its range


def test_crop_probability_and_seed() -> None:
    valid = _valid([200] * 400, 200)
    cropped = random_crop(valid, np.random.default_rng(3), 0.25, 50)
    share = float((cropped.sum(dim=1) < 200).float().mean())
    assert 0.17 < share < 0.33  # about p of the rows (a drawn span may still be whole: rarely)
    assert torch.equal(cropped, random_crop(valid, np.random.default_rng(3), 0.25, 50))


def test_mixup_off_is_the_identity() -> None:
    x = torch.randn(4, 30, 8)
    valid = _valid([30, 20, 25, 30], 30)
    mixed = mixup(x, valid, np.random.default_rng(0), 0.0, 0.4)
    assert mixed.x is x and mixed.valid is valid
    assert mixed.partner.tolist() == [0, 1, 2, 3] and mixed.share.tolist() == [1.0] * 4


@pytest.mark.parametrize("layout", ["states", "mels"])
def test_mixup_mixes_each_row_with_another_by_its_share(layout: str) -> None:
    batch, frames = 16, 40
    x = torch.randn(batch, frames, 8) if layout == "states" else torch.randn(batch, 80, 2 * frames)
    counts = [frames - k for k in range(batch)]
    valid = _valid(counts, frames)
    mixed = mixup(x, valid, np.random.default_rng(1), 1.0, 0.4)
    partner, share = mixed.partner.tolist(), mixed.share.tolist()
    assert all(p != row for row, p in enumerate(partner))
    assert all(0.5 <= s <= 1.0 for s in share) and len(set(share)) > 1
    for row in range(batch):
        expected = share[row] * x[row] + (1 - share[row]) * x[partner[row]]
        assert torch.allclose(mixed.x[row], expected, atol=1e-6)
        assert mixed.valid[row].sum() == min(counts[row], counts[partner[row]])


def test_mixup_probability() -> None:
    x = torch.randn(400, 5, 2)
    mixed = mixup(x, _valid([5] * 400, 5), np.random.default_rng(2), 0.3, 0.4)
    drawn = float((mixed.share < 1).float().mean())
    assert 0.22 < drawn < 0.38
    unmixed = (mixed.share == 1).nonzero().flatten()
    assert torch.equal(mixed.x[unmixed], x[unmixed])
    assert torch.equal(mixed.partner[unmixed], unmixed)


def test_speaker_shift_off_or_without_another_speaker_is_none() -> None:
    own, pool = np.ones((4, 3), dtype=np.float32), np.eye(3, dtype=np.float32)
    assert speaker_shift(own, pool, np.random.default_rng(0), 0.0, 1.0) is None
    assert speaker_shift(own, pool[:1], np.random.default_rng(0), 1.0, 1.0) is None


def test_speaker_shift_moves_a_drawn_row_toward_one_pool_speaker_by_at_most_the_share() -> None:
    rng = np.random.default_rng(5)
    pool = rng.normal(size=(6, 16)).astype(np.float32)
    own = pool[rng.integers(0, 6, size=200)]
    offsets = speaker_shift(own, pool, np.random.default_rng(1), 1.0, 0.8)
    assert offsets is not None and offsets.shape == own.shape and offsets.dtype == np.float32
    shares = []
    for row in range(len(own)):
        moved = own[row] - offsets[row]  # the row's speaker mean as the head sees it
        if not offsets[row].any():
            continue  # drawn its own speaker: nothing moves
        # on the segment from its own mean toward exactly one pool speaker, at share l in [0, 0.8]
        fits = []
        for other in pool:
            direction = other - own[row]
            if not direction.any():
                continue
            share = float(direction @ (moved - own[row]) / (direction @ direction))
            if np.allclose(own[row] + share * direction, moved, atol=1e-5):
                fits.append(share)
        assert len(fits) == 1 and 0 <= fits[0] <= 0.8 + 1e-6
        shares.append(fits[0])
    assert len(shares) > 150 and min(shares) < 0.1 and max(shares) > 0.7  # uniform over [0, 0.8]


def test_speaker_shift_probability_and_seed() -> None:
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(50, 8)).astype(np.float32)
    own = pool[rng.integers(0, 50, size=1000)]
    offsets = speaker_shift(own, pool, np.random.default_rng(4), 0.3, 1.0)
    assert offsets is not None
    share = float(np.abs(offsets).sum(axis=1).astype(bool).mean())
    assert 0.25 < share < 0.35  # about p of the rows (a row drawing its own speaker stays: 1 in 50)
    again = speaker_shift(own, pool, np.random.default_rng(4), 0.3, 1.0)
    assert again is not None and np.array_equal(offsets, again)


def test_snapshots_keep_the_best_k_epochs_on_disk(tmp_path: Path) -> None:
    saved: list[int] = []

    def save(epoch: int) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            folder.mkdir(parents=True)
            saved.append(epoch)
        return write

    kept: list[dict[str, Any]] = []
    for epoch, ua in enumerate([0.5, 0.7, 0.6, 0.7, 0.4, 0.8]):
        kept = _keep_snapshot(tmp_path, kept, 3, ua, epoch, False, save(epoch))
    assert [e["epoch"] for e in kept] == [5, 1, 3]  # a tie goes to the earlier epoch
    assert saved == [0, 1, 2, 3, 5]  # epoch 4 never ranked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-001", "epoch-003", "epoch-005"]
