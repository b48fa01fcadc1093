"""Stream adaptation's pure logic (edge_ser.centring): the running mean, its shrinkage, weights and reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_ser.centring import FRAMES_PER_S, CentringConfig, StreamCentring, standardised_mean


def test_the_layer_norm_output_gives_back_the_standardised_mean() -> None:
    rng = np.random.default_rng(0)
    states = (rng.standard_normal((40, 512)) * 2 + 0.5).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, 512).astype(np.float32)
    beta = rng.uniform(-1.0, 1.0, 512).astype(np.float32)
    normed = torch.nn.functional.layer_norm(torch.from_numpy(states), (512,), torch.from_numpy(gamma),
                                            torch.from_numpy(beta)).numpy()
    np.testing.assert_allclose(standardised_mean(normed, gamma, beta), standardised_mean(states), atol=1e-4)


def test_blocks_side_by_side_are_standardised_each_on_its_own() -> None:
    rng = np.random.default_rng(1)
    blocks = [(rng.standard_normal((30, 512)) * scale + shift).astype(np.float32) for scale, shift in ((1, 0), (5, 3))]
    gamma = rng.uniform(0.5, 2.0, 512).astype(np.float32)
    beta = rng.uniform(-1.0, 1.0, 512).astype(np.float32)
    side_by_side = np.concatenate(blocks, axis=1)
    each = np.concatenate([standardised_mean(b) for b in blocks])
    np.testing.assert_allclose(standardised_mean(side_by_side, block=512), each, atol=1e-5)
    normed = np.concatenate([torch.nn.functional.layer_norm(torch.from_numpy(b), (512,), torch.from_numpy(gamma),
                                                            torch.from_numpy(beta)).numpy() for b in blocks], axis=1)
    np.testing.assert_allclose(standardised_mean(normed, gamma, beta), each, atol=1e-4)
    assert np.abs(standardised_mean(side_by_side) - each).max() > 0.1  # one standardisation over both differs
    with pytest.raises(ValueError, match="1000 channels, not a multiple of the norm's 512"):
        standardised_mean(side_by_side[:, :1000], gamma, beta)


def test_offset_is_the_shrunk_running_mean_minus_the_reference() -> None:
    reference = np.array([0.0, 1.0])
    centring = StreamCentring(CentringConfig(prior_s=2.0), reference)
    assert centring.offset(0.0) is None  # nothing heard: the first window is scored as is
    centring.push(np.array([2.0, 1.0]), segment_id=0, t0=0.0, t1=2.0)
    centring.push(np.array([4.0, 3.0]), segment_id=0, t0=1.0, t1=3.0)  # overlaps: only 2-3 s is new
    mean = (2 * np.array([2.0, 1.0]) + 1 * np.array([4.0, 3.0])) / 3
    np.testing.assert_allclose(centring.offset(3.0), 3.0 / (3.0 + 2.0) * (mean - reference), rtol=1e-6)
    assert centring.heard_s == pytest.approx(3.0)
    no_prior = StreamCentring(CentringConfig(prior_s=0.0), reference)
    no_prior.push(np.array([2.0, 1.0]), 0, 0.0, 0.5)
    np.testing.assert_allclose(no_prior.offset(1.0), [2.0, 0.0])
    no_prior.push(np.array([0.0, 1.0]), 1, 0.2, 0.7)  # a new segment: all of its window is new
    assert no_prior.heard_s == pytest.approx(1.0)


def test_a_long_silence_starts_over_and_bad_means_are_skipped() -> None:
    centring = StreamCentring(CentringConfig(prior_s=0.0, reset_after_s=60.0), np.zeros(2))
    centring.push(np.array([1.0, 1.0]), 0, 9.0, 10.0)
    assert centring.offset(69.0) is not None
    centring.push(np.array([np.nan, 1.0]), 1, 69.0, 70.0)  # a window whose features are not finite adds nothing
    assert centring.heard_s == pytest.approx(1.0)
    assert centring.offset(131.0) is None and centring.heard_s == 0  # 61 s without a scored window
    never = StreamCentring(CentringConfig(reset_after_s=None), np.zeros(2))
    never.push(np.ones(2), 0, 0.0, 1.0)
    assert never.offset(1e6) is not None
    with pytest.raises(ValueError, match=r"feature mean has shape \(3,\); the reference \(2,\)"):
        never.push(np.ones(3), 0, 1.0, 2.0)


def test_frames_per_second_is_the_encoders() -> None:
    assert FRAMES_PER_S == 50.0  # 20 ms encoder frames: prior_s * 50 frames
