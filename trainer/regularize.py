"""Batch-level regularizers applied in training after the frozen layers: random crops of a clip's frames,
mixup of two clips, speaker shifts (a clip's speaker-level feature offset moved toward another training
speaker's) and style mixing (a clip's per-channel feature mean and spread over time mixed with another
corpus's clip's, MixStyle). All draw from their own numpy generator, so turning them on leaves the batch
order, the view choice and dropout of a run unchanged. The cross-corpus contrast is an extra loss on the
head's activations (it draws nothing at all)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.cache import masked_frame_mean


@dataclass(frozen=True)
class MixedBatch:
    """A batch after mixup: inputs, the valid-frame mask, and for each row the partner row and its share."""

    x: torch.Tensor
    valid: torch.Tensor
    partner: torch.Tensor  # (B,) long: the row mixed into each row (itself when not mixed)
    share: torch.Tensor  # (B,) float: the row's own share lambda in [0.5, 1]; 1 when not mixed


def random_crop(valid: torch.Tensor, rng: np.random.Generator, p: float, min_frames: int) -> torch.Tensor:
    """Keep one random contiguous span of each row's valid frames with probability ``p``.

    ``valid`` is (B, T) bool with each row's valid frames first (a prefix). A cropped row keeps a span whose
    length is uniform in [min(min_frames, n), n] for its n valid frames, at a uniform start; rows not drawn,
    and rows with at most ``min_frames`` valid frames, are returned unchanged."""
    if p <= 0:
        return valid
    counts = valid.sum(dim=1).cpu().numpy()
    out = valid.clone()
    positions = torch.arange(valid.shape[1], device=valid.device)
    for row, n in enumerate(counts):
        if n <= min_frames or rng.random() >= p:
            continue
        length = int(rng.integers(min_frames, n + 1))
        start = int(rng.integers(0, n - length + 1))
        out[row] = (positions >= start) & (positions < start + length)
    return out


def mixup(x: torch.Tensor, valid: torch.Tensor, rng: np.random.Generator, p: float, alpha: float) -> MixedBatch:
    """Mix each drawn row (probability ``p``) with another row of the batch: x = s x_i + (1 - s) x_j with
    s = max(l, 1 - l), l ~ Beta(alpha, alpha), over the frames both rows carry (the shorter one's length).

    ``x`` is (B, T, D) frame states or (B, n_mels, T) log-mels; ``valid`` is (B, T') with T' = T for
    states and T / 2 for log-mels (the encoder's stride), and is cut to the frames valid in both rows."""
    batch = x.shape[0]
    partner = np.arange(batch)
    share = np.ones(batch, dtype=np.float32)
    if p > 0 and alpha > 0 and batch > 1:
        drawn = rng.random(batch) < p
        others = rng.integers(0, batch - 1, size=batch)
        others = others + (others >= np.arange(batch))  # any row but itself
        lam = rng.beta(alpha, alpha, size=batch).astype(np.float32)
        partner = np.where(drawn, others, partner)
        share = np.where(drawn, np.maximum(lam, 1 - lam), share).astype(np.float32)
    partner_t = torch.from_numpy(partner).to(x.device)
    share_t = torch.from_numpy(share).to(x.device)
    if bool((share == 1).all()):
        return MixedBatch(x, valid, partner_t, share_t)
    shape = (batch,) + (1,) * (x.dim() - 1)
    mixed = share_t.view(shape).to(x.dtype) * x + (1 - share_t.view(shape)).to(x.dtype) * x[partner_t]
    return MixedBatch(mixed, valid & valid[partner_t], partner_t, share_t)


def speaker_shift(own: np.ndarray, pool: np.ndarray, rng: np.random.Generator, p: float, max_share: float
                  ) -> np.ndarray | None:
    """Offsets (B, D) that move each drawn row's speaker mean toward another training speaker's.

    ``own`` (B, D): each row's speaker mean of standardised encoder features (trainer/speaker_norm.py);
    ``pool`` (S, D): every training speaker's mean. A drawn row (probability ``p``) gets ``l * (own - other)``
    with ``other`` a speaker of ``pool`` drawn uniformly and ``l ~ U(0, max_share)``; the head reads
    ``features - gamma * offset`` (``EmotionModel.features``), so the row's speaker mean becomes
    ``own + l * (other - own)``: the same speech as if spoken by a mix of the two speakers' setups, emotion
    untouched (the means are averages over all of a speaker's clips). Rows not drawn get zeros; None when
    ``p`` is 0 or there is no other speaker to draw."""
    if p <= 0 or max_share <= 0 or len(pool) < 2:
        return None
    batch = own.shape[0]
    drawn = rng.random(batch) < p
    other = pool[rng.integers(0, len(pool), size=batch)]
    share = rng.uniform(0.0, max_share, size=batch) * drawn
    return (share[:, None] * (own - other)).astype(np.float32)


@dataclass(frozen=True)
class StyleMix:
    """Which rows of a batch take part of another row's feature statistics, and how much of their own they keep."""

    partner: torch.Tensor  # (B,) long: the row whose statistics are mixed in (itself when not drawn)
    share: torch.Tensor  # (B,) float: the row's own share lambda in [0, 1]; 1 when not drawn

    @property
    def drawn(self) -> torch.Tensor:
        return self.share < 1


def style_partners(corpora: np.ndarray, classes: np.ndarray, rng: np.random.Generator, p: float, alpha: float,
                   same_class: bool) -> StyleMix | None:
    """Draw style-mixing partners for a batch: each row (probability ``p``) gets a partner drawn uniformly
    from the batch rows of *another* corpus (and, with ``same_class``, of the same class), and an own share
    ``l ~ Beta(alpha, alpha)``. Rows drawn without an eligible partner stay unmixed. None when ``p`` is 0.

    Mixing with another corpus's statistics is MixStyle's cross-domain variant; ``same_class`` keeps what a
    clip's statistics say about its emotion (the partner is the same emotion) and moves only the rest."""
    if p <= 0:
        return None
    batch = len(corpora)
    partner = np.arange(batch)
    share = np.ones(batch, dtype=np.float32)
    drawn = rng.random(batch) < p
    lam = rng.beta(alpha, alpha, size=batch).astype(np.float32)
    picks = rng.random(batch)
    for row in np.flatnonzero(drawn):
        eligible = corpora != corpora[row]
        if same_class:
            eligible &= classes == classes[row]
        candidates = np.flatnonzero(eligible)
        if len(candidates):
            partner[row] = candidates[int(picks[row] * len(candidates))]
            share[row] = lam[row]
    partner = np.where(share < 1, partner, np.arange(batch))  # a draw of l = 1 (float32) mixes nothing
    return StyleMix(torch.from_numpy(partner), torch.from_numpy(share))


def mix_statistics(feats: torch.Tensor, valid: torch.Tensor, style: StyleMix, eps: float = 1e-6) -> torch.Tensor:
    """MixStyle on frame features (B, F, D): each drawn row is standardised with its own per-channel mean and
    standard deviation over its valid frames, then rescaled with ``l * own + (1 - l) * partner``'s (the
    partner's statistics over *its* valid frames). The statistics are taken out of the gradient, as in
    MixStyle; rows not drawn are returned unchanged."""
    mean = masked_frame_mean(feats, valid, keepdim=True).detach()
    std = (masked_frame_mean((feats - mean) ** 2, valid, keepdim=True) + eps).sqrt().detach()
    partner = style.partner.to(feats.device)
    share = style.share.to(device=feats.device, dtype=feats.dtype).view(-1, 1, 1)
    mixed_mean = share * mean + (1 - share) * mean[partner]
    mixed_std = share * std + (1 - share) * std[partner]
    mixed = (feats - mean) / std * mixed_std + mixed_mean
    return torch.where(style.drawn.to(feats.device).view(-1, 1, 1), mixed, feats)


def cross_corpus_contrast(pooled: torch.Tensor, labels: torch.Tensor, corpora: torch.Tensor,
                          temperature: float) -> tuple[torch.Tensor, int]:
    """Supervised contrastive loss whose positives come from other corpora only, and how many rows anchored it.

    ``pooled`` (B, H): each clip's head activations averaged over its frames; ``labels`` (B,) its class;
    ``corpora`` (B,) its corpus. On the unit sphere, each row is pulled toward the rows of the same class from
    *another* corpus and pushed from the rows of other classes (any corpus); rows of its own class and corpus
    are neither (they are what a corpus-specific cue would already group). The loss of a row is the mean, over
    its positives, of -log softmax of cosine / ``temperature`` among its positives and negatives; rows without
    a positive in the batch add nothing. Returns a zero loss when no row has a positive."""
    z = torch.nn.functional.normalize(pooled.float(), dim=-1)
    similarity = z @ z.T / temperature
    same_label = labels[:, None] == labels[None, :]
    same_corpus = corpora[:, None] == corpora[None, :]
    positive = same_label & ~same_corpus
    candidate = positive | ~same_label
    log_prob = similarity.masked_fill(~candidate, -1e4)  # finite: a row with no candidate stays NaN-free
    log_prob = log_prob - torch.logsumexp(log_prob, dim=1, keepdim=True)
    n_positive = positive.sum(dim=1)
    anchors = n_positive > 0
    if not bool(anchors.any()):
        return similarity.sum() * 0.0, 0
    per_row = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / n_positive.clamp(min=1)
    return per_row[anchors].mean(), int(anchors.sum())
