"""The window-statistics classifier: its statistics, its move into a LayerNorm's feature space, the torch
term against numpy, and the checkpoint checks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_ser.backends.numpy_head import NumpyHead
from edge_ser.centring import standardise
from edge_ser.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edge_ser.linear_probe import ProbeError
from edge_ser.model import StatsTerm
from edge_ser.window_stats import StatsHead, window_statistics
from trainer.window_stats import fit_stats

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 512


def _head(seed: int = 0, members: int = 1, classes: int = 8, fusion: float = 0.4, width: int = WIDTH) -> StatsHead:
    rng = np.random.default_rng(seed)
    return StatsHead(rng.normal(0, 1, (members, 2 * width)).astype(np.float32),
                     rng.uniform(0.5, 2, (members, 2 * width)).astype(np.float32),
                     rng.normal(0, 0.05, (members, classes, 2 * width)).astype(np.float32),
                     rng.normal(0, 1, (members, classes)).astype(np.float32), fusion_weight=fusion, fit={"c": 1.0})


def test_standardise_is_a_layer_norm_without_its_affine_per_block() -> None:
    states = np.random.default_rng(0).normal(3, 2, (40, 2 * WIDTH)).astype(np.float32)
    expected = torch.cat([torch.nn.functional.layer_norm(torch.from_numpy(part), (WIDTH,), eps=1e-5)
                          for part in np.split(states, 2, axis=1)], dim=1).numpy()
    np.testing.assert_allclose(standardise(states, WIDTH), expected, atol=1e-5)
    stats = window_statistics(expected)
    assert stats.shape == (4 * WIDTH,) and stats.dtype == np.float32
    np.testing.assert_allclose(stats[: 2 * WIDTH], expected.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(stats[2 * WIDTH :], expected.std(axis=0), atol=1e-6)


def test_in_feature_space_scores_affine_features_as_the_standardised_ones() -> None:
    """A head fitted on standardised features gives the same log-probabilities on the features after any
    LayerNorm affine, negative scales included."""
    rng = np.random.default_rng(1)
    head = _head(1, members=3)
    gamma = rng.normal(0, 1, WIDTH).astype(np.float32)
    beta = rng.normal(0, 1, WIDTH).astype(np.float32)
    standardised = rng.normal(0, 1, (5, 30, WIDTH)).astype(np.float32)
    plain = head.log_probs(np.stack([window_statistics(x) for x in standardised]))
    moved = head.in_feature_space(gamma, beta)
    affine = moved.log_probs(np.stack([window_statistics(gamma * x + beta) for x in standardised]))
    np.testing.assert_allclose(affine, plain, atol=2e-4)
    assert np.ptp(plain, axis=0).max() > 0.05  # the windows are told apart


def test_the_torch_term_matches_numpy_over_valid_frames_only() -> None:
    rng = np.random.default_rng(2)
    head = _head(2, members=2)
    x = rng.normal(0, 1, (3, 50, WIDTH)).astype(np.float32)
    lengths = [50, 31, 12]
    valid = torch.zeros(3, 50, dtype=torch.bool)
    for row, n in enumerate(lengths):
        valid[row, :n] = True
        x[row, n:] = 1e3  # padding must not count
    term = StatsTerm(head)(torch.from_numpy(x), valid).numpy()
    expected = np.stack([head.logit_bias(window_statistics(x[row, :n])[None])[0] for row, n in enumerate(lengths)])
    np.testing.assert_allclose(term, expected, atol=1e-4)


def test_fit_stats_reads_the_classes_from_the_statistics() -> None:
    rng = np.random.default_rng(3)
    top = rng.integers(0, 4, 400)
    centres = rng.normal(0, 2, (4, 16))
    x = (centres[top] + rng.normal(0, 1, (400, 16))).astype(np.float32) * 0.1 + 5
    targets = np.eye(8, dtype=np.float32)[top]
    head = fit_stats(x, targets, np.ones(400, np.float32), 1.0, 0.4)
    assert head.weight.shape == (1, 8, 16) and head.fit == {"c": 1.0} and head.fusion_weight == 0.4
    assert (head.log_probs(x).argmax(axis=1) == top).mean() > 0.9
    with pytest.raises(ProbeError, match=r"different fusion weights \[0.3, 0.4\]"):
        StatsHead.merge([head, _head(fusion=0.3, width=8)])


@pytest.fixture
def model_with_stats(tmp_path: Path) -> Path:
    """A copy of the shipped model with a random window-statistics classifier written into it."""
    folder = tmp_path / "model"
    shutil.copytree(ROOT / "models" / "default", folder)
    meta, tensors = load_checkpoint(folder)
    head = _head(4, classes=len(meta.labels))
    meta.stats = head.meta()
    save_checkpoint(folder, meta, {**tensors, **head.tensors()})
    return folder


def test_the_numpy_head_adds_the_term_to_every_frame(model_with_stats: Path) -> None:
    meta, tensors = load_checkpoint(model_with_stats)
    with_term = NumpyHead(meta, tensors)
    meta.stats = None
    without = NumpyHead(meta, tensors)
    features = np.random.default_rng(5).normal(0, 1, (100, WIDTH)).astype(np.float32)
    difference = with_term(features).logits - without(features).logits
    assert np.abs(difference).max() > 0.05
    np.testing.assert_allclose(difference, np.broadcast_to(difference[0], difference.shape), atol=1e-5)
    gamma, beta = tensors["norm.weight"], tensors["norm.bias"]
    expected = StatsHead.from_tensors({"weight": 0.4}, tensors).logit_bias(
        window_statistics((features - beta) / gamma)[None])[0]
    np.testing.assert_allclose(difference[0], expected, atol=1e-4)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m, t: m.update(stats={"weight": 0.4, "extra": 1}), "'stats' must be null or an object with 'weight'"),
    (lambda m, t: m.update(stats={"weight": 11}), "stats.weight must be a number in 0..10, got 11"),
    (lambda m, t: m.update(stats={"weight": 0.4, "fit": {"c": -1}}), "stats.fit must be an object with a positive"),
    (lambda m, t: t.update({"stats.mean": t["stats.mean"][:, :100]}), r"tensor 'stats.mean' has shape \(1, 100\); "
     r"expected \(1, 1024\)"),
    (lambda m, t: t.pop("stats.bias"), r"missing tensors \['stats.bias'\]"),
    (lambda m, t: t.update({"stats.scale": -t["stats.scale"]}), "tensor 'stats.scale' must be positive"),
])
def test_a_damaged_classifier_is_named(model_with_stats: Path, change: Callable[[dict, dict], object], message: str
                                       ) -> None:
    """Refused when written, and when a model.json edited on disk describes it wrongly."""
    meta, tensors = load_checkpoint(model_with_stats)
    raw = json.loads((model_with_stats / "model.json").read_text())
    change(raw, tensors)
    meta.stats = raw["stats"]
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(model_with_stats.parent / "bad", meta, tensors)
    if raw["stats"] != load_checkpoint(model_with_stats)[0].stats:  # the same damage to the file on disk
        (model_with_stats / "model.json").write_text(json.dumps(raw))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(model_with_stats)


def test_engines_add_the_term_only_when_asked_as_the_agent_does(model_with_stats: Path) -> None:
    """``make_engine`` leaves the term out unless ``stats`` (the agent's ``model.stats``, off by default); with
    it, every frame of a window moves by the same amount, and both backends agree."""
    from realdata import real_windows

    from edge_ser.backends import Ct2EngineConfig, TorchEngineConfig, make_engine

    windows = real_windows(1)
    plain = make_engine(Ct2EngineConfig(compute_type="float32"), model_with_stats).infer(windows)
    fused = make_engine(Ct2EngineConfig(compute_type="float32"), model_with_stats, stats=True).infer(windows)
    reference = make_engine(TorchEngineConfig(), model_with_stats, stats=True).infer(windows)
    for a, b, c in zip(plain, fused, reference, strict=True):
        moved = b.logits - a.logits
        assert np.abs(moved).max() > 0.05
        np.testing.assert_allclose(moved, np.broadcast_to(moved[0], moved.shape), atol=1e-4)
        assert np.abs(b.clip_probs() - c.clip_probs()).max() < 1e-3


@pytest.mark.parametrize(("cached", "settings", "message"), [
    (False, [], r"needs the frame cache \(cache: true\)"),
    (True, ["trainable_layers=1"], r"fine-tuned encoder layers \(trainable_layers > 0"),
    (True, ["normalize=speaker"], r"normalize: speaker"),
    (True, ["mix_layers=[2,3]"], "a learned layer mix"),
])
def test_recipes_it_cannot_serve_are_refused_before_training(cached: bool, settings: list[str], message: str
                                                              ) -> None:
    """Pure logic: which recipes the classifier, read from the frame cache, cannot be fitted for."""
    from trainer.config import load_config
    from trainer.train import RunData

    config = load_config(ROOT / "configs" / "train-cpu.yaml", ["stats.enabled=true", *settings])
    data = RunData(manifest=None, labels=None, cache=object() if cached else None, usable=[])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        data.check_stats(config)
