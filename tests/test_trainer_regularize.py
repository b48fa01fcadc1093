"""Random crops, mixup, speaker shifts, style mixing, the cross-corpus contrast and the frame-level loss of
training batches, and which epochs a snapshot run keeps (pure logic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainer.cache import valid_mask
from trainer.regularize import (
    StyleMix,
    cross_corpus_contrast,
    mix_statistics,
    mixup,
    random_crop,
    speaker_shift,
    style_partners,
)
from trainer.train import _keep_snapshot, frame_cross_entropy


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


def test_style_partners_off_is_none_and_partners_come_from_another_corpus() -> None:
    corpora = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    classes = np.array([0, 1, 0, 1, 0, 1, 1, 2])  # row 7: the only clip of class 2
    assert style_partners(corpora, classes, np.random.default_rng(0), 0.0, 0.1, False) is None
    for same_class in (False, True):
        for seed in range(30):
            style = style_partners(corpora, classes, np.random.default_rng(seed), 1.0, 0.1, same_class)
            assert style is not None
            partner, share = style.partner.numpy(), style.share.numpy()
            assert ((share >= 0) & (share <= 1)).all()
            for row in np.flatnonzero(share < 1):
                assert corpora[partner[row]] != corpora[row]
                if same_class:
                    assert classes[partner[row]] == classes[row]
            assert (partner[share == 1] == np.flatnonzero(share == 1)).all()  # unmixed rows keep themselves
            if same_class:
                assert share[7] == 1  # no other clip of its class to borrow from


def test_style_mix_probability_and_seed() -> None:
    corpora, classes = np.arange(4000) % 5, np.zeros(4000, dtype=int)
    style = style_partners(corpora, classes, np.random.default_rng(3), 0.5, 0.1, False)
    again = style_partners(corpora, classes, np.random.default_rng(3), 0.5, 0.1, False)
    assert style is not None and again is not None
    assert torch.equal(style.partner, again.partner) and torch.equal(style.share, again.share)
    assert 0.45 < float(style.drawn.float().mean()) < 0.55


def test_mix_statistics_moves_a_rows_mean_and_spread_to_its_partners_and_keeps_its_pattern() -> None:
    torch.manual_seed(0)
    feats = torch.randn(3, 12, 5) * torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0]) + torch.arange(5.0)
    feats[1] = feats[1] * 3 - 7
    feats[1, 9:] = 1e3  # padding of row 1: must not count in its statistics
    valid = _valid([12, 9, 12], 12)
    style = StyleMix(torch.tensor([1, 1, 0]), torch.tensor([0.0, 1.0, 0.25]))
    out = mix_statistics(feats, valid, style)
    assert torch.equal(out[1], feats[1])  # not drawn: untouched
    partner = feats[1, :9]
    assert torch.allclose(out[0].mean(0), partner.mean(0), atol=1e-4)
    assert torch.allclose(out[0].std(0, unbiased=False), partner.std(0, unbiased=False), atol=1e-3)
    own = (feats[0] - feats[0].mean(0)) / feats[0].std(0, unbiased=False)
    assert torch.allclose((out[0] - out[0].mean(0)) / out[0].std(0, unbiased=False), own, atol=1e-3)
    mean = 0.25 * feats[2].mean(0) + 0.75 * feats[0].mean(0)  # row 2 keeps a quarter of its own
    std = 0.25 * feats[2].std(0, unbiased=False) + 0.75 * feats[0].std(0, unbiased=False)
    assert torch.allclose(out[2].mean(0), mean, atol=1e-4)
    assert torch.allclose(out[2].std(0, unbiased=False), std, atol=1e-3)


def test_contrast_without_a_cross_corpus_positive_is_zero_and_finite() -> None:
    pooled = torch.randn(4, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    corpora = torch.tensor([0, 0, 0, 0])  # one corpus: no positive anywhere
    loss, anchors = cross_corpus_contrast(pooled, labels, corpora, 0.1)
    loss.backward()
    assert anchors == 0 and float(loss) == 0.0
    assert pooled.grad is not None and torch.isfinite(pooled.grad).all()


def test_contrast_rewards_one_class_across_corpora_and_ignores_its_own_corpus() -> None:
    labels = torch.tensor([0, 0, 1, 0])
    corpora = torch.tensor([0, 1, 1, 0])
    a, b = [1.0, 0.0], [0.0, 1.0]
    aligned = torch.tensor([a, a, b, b])  # row 0 and its cross-corpus positive (row 1) point the same way
    crossed = torch.tensor([a, b, a, a])  # class-0 rows next to the class-1 row, away from their positives
    loss_aligned, anchors = cross_corpus_contrast(aligned, labels, corpora, 0.5)
    loss_crossed, _ = cross_corpus_contrast(crossed, labels, corpora, 0.5)
    assert anchors == 3  # rows 0, 1, 3 have a same-class row in another corpus; row 2 has none
    assert float(loss_aligned) < float(loss_crossed)
    # by hand, temperature 0.5 (cosines 1 or 0 -> 2 or 0). Row 3 shares row 0's class and corpus, so neither
    # is in the other's loss: row 0 sees row 1 (+) and row 2 (-); row 1 sees rows 0, 3 (+) and 2 (-); row 3
    # sees row 1 (+) and row 2 (-).
    log_softmax = torch.log_softmax
    row0 = -log_softmax(torch.tensor([2.0, 0.0]), dim=0)[0]
    row1 = -log_softmax(torch.tensor([2.0, 0.0, 0.0]), dim=0)[[0, 2]].mean()
    row3 = -log_softmax(torch.tensor([0.0, 2.0]), dim=0)[0]
    assert torch.allclose(loss_aligned, (row0 + row1 + row3) / 3)


def test_frame_loss_averages_each_valid_frames_cross_entropy_and_skips_padding() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [9.0, -9.0]],  # row 0: third frame is padding
                           [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])  # row 1: no valid frame
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    per_clip = frame_cross_entropy(logits, targets, valid)
    first, second = (torch.log_softmax(torch.tensor(x), 0)[0] for x in ([2.0, 0.0], [0.0, 2.0]))
    by_hand = -(first + second) / 2
    assert torch.allclose(per_clip, torch.stack([by_hand, torch.tensor(0.0)]))


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
