"""Paper-2 baseline pieces (resampling, classifiers), loss weights, batching and the model card's licences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.baselines import FFN, fit_predict, rebalance, train_ffn
from trainer.batches import epoch_batches
from trainer.card import licences
from trainer.config import TrainConfig
from trainer.train import loss_log_prior, loss_weights

SOURCES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "SOURCES.md"


def blobs(counts: tuple[int, ...], seed: int = 0, spacing: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(spacing * k, 1.0, size=(n, 6)) for k, n in enumerate(counts)]).astype(np.float32)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return x, y


@pytest.mark.parametrize("method", ["smote", "adasyn"])
def test_oversampling_balances_the_classes(method: str) -> None:
    x, y = blobs((60, 12, 20), spacing=1.0)  # overlapping: ADASYN needs minority points near the majority
    xb, yb = rebalance(x, y, method, seed=0)
    counts = np.bincount(yb)
    assert counts[0] == 60 and counts.min() >= 50  # ADASYN balances approximately
    assert xb.shape[1] == 6 and len(xb) == len(yb)


def test_downsampling_and_none() -> None:
    x, y = blobs((60, 12, 20))
    _, yb = rebalance(x, y, "downsample", seed=0)
    assert np.bincount(yb).tolist() == [12, 12, 12]
    same = rebalance(x, y, "none", seed=0)
    assert same[0] is x and same[1] is y


def test_classifiers_separate_easy_blobs() -> None:
    x, y = blobs((40, 40, 40))
    xt, yt = blobs((10, 10, 10), seed=1)
    logits = fit_predict(x, y, xt, 3, "logreg", "smote", epochs=0, seed=0)
    assert logits.shape == (30, 3)
    assert (logits.argmax(axis=1) == yt).mean() > 0.9
    mean, std = x.mean(axis=0), x.std(axis=0)
    ffn = train_ffn((x - mean) / std, y, 3, epochs=30, seed=0, lr=1e-3, batch_size=16, widths=(64, 32))
    with torch.no_grad():
        predicted = ffn(torch.from_numpy((xt - mean) / std)).argmax(dim=1).numpy()
    assert (predicted == yt).mean() > 0.9


def test_ffn_has_the_paper_widths() -> None:
    widths = [m.out_features for m in FFN(1024, 4).net if hasattr(m, "out_features")]
    assert widths == [4096, 2048, 1024, 512, 4]


def test_loss_weights_balance_classes_and_corpora() -> None:
    targets = np.eye(8, dtype=np.float32)[[0, 0, 0, 1, 0, 1]]
    corpora = ["a", "a", "a", "a", "b", "b"]
    config = TrainConfig.model_validate({"balance": {"class_power": 1.0, "corpus_power": 0.0}})
    w = loss_weights(targets, corpora, config)
    assert w.mean() == pytest.approx(1.0)
    assert w[0] * 4 == pytest.approx(w[3] * 2)  # 4 of class 0, 2 of class 1: total weight per class equal
    config = TrainConfig.model_validate({"balance": {"class_power": 0.0, "corpus_power": 1.0}})
    w = loss_weights(targets, corpora, config)
    assert w[:4].sum() == pytest.approx(w[4:].sum())


def test_loss_log_prior_is_what_the_weighted_loss_sees() -> None:
    targets = np.eye(8, dtype=np.float32)[[0, 0, 0, 1, 0, 1]]
    corpora = ["a", "a", "a", "a", "b", "b"]
    balanced = TrainConfig.model_validate({"balance": {"class_power": 1.0, "corpus_power": 0.0}})
    prior = np.exp(loss_log_prior(targets, loss_weights(targets, corpora, balanced)))
    assert prior.sum() == pytest.approx(1.0)
    assert prior[0] == pytest.approx(prior[1])  # class weights already balance: nothing left to correct
    assert prior[2:] == pytest.approx(np.full(6, prior[0]))  # unseen classes: no more than the rarest seen
    plain = TrainConfig.model_validate({"balance": {"class_power": 0.0, "corpus_power": 0.0}})
    prior = np.exp(loss_log_prior(targets, loss_weights(targets, corpora, plain)))
    assert prior[0] == pytest.approx(2 * prior[1])  # unweighted: the raw 4:2 imbalance
    with pytest.raises(ValueError, match="no class has training mass"):
        loss_log_prior(targets, np.zeros(6, dtype=np.float32))


def test_epoch_batches_cover_everything_and_shard_evenly() -> None:
    lengths = np.arange(103, dtype=np.float64)
    single = epoch_batches(lengths, 8, np.random.default_rng(0))
    assert sorted(np.concatenate(single).tolist()) == list(range(103))
    ranks = [epoch_batches(lengths, 8, np.random.default_rng(0), rank, 2) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) // 2
    assert not set(np.concatenate(ranks[0]).tolist()) & set(np.concatenate(ranks[1]).tolist())


def test_licences_from_sources() -> None:
    if not SOURCES.is_file():
        pytest.skip(f"{SOURCES} not available")
    found = licences(SOURCES)
    assert found["ravdess"] == "CC BY-NC-SA 4.0"
    assert found["tess"] == "CC BY-NC-ND 4.0"
    assert {"ased", "casia", "emodb", "nemo"} <= set(found)
