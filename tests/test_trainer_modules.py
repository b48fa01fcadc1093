"""Gradient reversal and the training module's domain head."""

from __future__ import annotations

import pytest
import torch

from edge_ser.model import EmotionHead, EmotionModel, HeadConfig, WhisperEncoder
from trainer.config import ConfigError, load_config
from trainer.modules import TrainModule, gradient_reversal


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = gradient_reversal(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -0.5, -0.75]))


def test_domain_head_pushes_shared_features_against_the_domain_loss() -> None:
    torch.manual_seed(0)
    encoder = WhisperEncoder(0)
    model = EmotionModel(encoder, torch.nn.LayerNorm(512), EmotionHead(HeadConfig(hidden=16, dropout=0.0)))
    module = TrainModule(model, start_layer=0, n_domains=3, domain_hidden=8)
    x = torch.randn(4, 10, 512)
    valid = torch.ones(4, 10, dtype=torch.bool)
    valid[0, 6:] = False
    labels = torch.tensor([0, 1, 2, 0])

    def fc1_grad(weight: float) -> torch.Tensor:
        module.zero_grad()
        module.reversal_weight = weight
        domain_logits = module(x, valid).domain_logits
        assert domain_logits is not None and domain_logits.shape == (4, 3)
        torch.nn.functional.cross_entropy(domain_logits, labels).backward()
        return model.head.fc1.weight.grad.clone()

    plain = fc1_grad(-1.0)  # weight -1: the reversal becomes the identity (ordinary gradient)
    reversed_ = fc1_grad(0.5)
    assert torch.allclose(reversed_, -0.5 * plain, atol=1e-6)
    assert fc1_grad(0.0).abs().max() == 0  # weight 0: the domain loss does not reach the shared layers


def test_speaker_offset_moves_the_standardised_features_before_the_layer_norm_affine() -> None:
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(512)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    model = EmotionModel(WhisperEncoder(0), norm, EmotionHead(HeadConfig(hidden=16, dropout=0.0)))
    x = torch.randn(2, 10, 512) * 3
    offset = torch.randn(2, 512)
    standardised = torch.nn.functional.layer_norm(x, (512,))
    expected = (standardised - offset[:, None, :]) * norm.weight + norm.bias
    centred = model.features(x, start_layer=0, hidden=x, offset=offset)
    assert torch.allclose(centred, expected, atol=1e-5)
    assert torch.allclose(model.features(x, start_layer=0, hidden=x, offset=torch.zeros(2, 512)),
                          model.features(x, start_layer=0, hidden=x), atol=1e-6)


def test_input_dropout_zeroes_feature_channels_in_training_only() -> None:
    torch.manual_seed(0)
    head = EmotionHead(HeadConfig(hidden=16, dropout=0.0, input_dropout=0.5))
    seen: list[torch.Tensor] = []
    head.fc1.register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[0].detach()))
    x = torch.randn(4, 50, 512).abs() + 0.1  # no exact zeros of its own
    valid = torch.ones(4, 50, dtype=torch.bool)

    head.train()
    head(x, valid)
    dropped = seen[-1] == 0
    assert abs(dropped.float().mean().item() - 0.5) < 0.02  # 102,400 channels, each dropped with p = 0.5
    assert torch.allclose(seen[-1][~dropped], 2.0 * x[~dropped])  # the kept ones rescaled by 1 / (1 - p)

    head.eval()
    eval_logits, _ = head(x, valid)
    assert torch.equal(seen[-1], x)
    plain = EmotionHead(HeadConfig(hidden=16, dropout=0.0))
    plain.load_state_dict(head.state_dict())
    plain.eval()
    assert torch.equal(plain(x, valid)[0], eval_logits)  # no new weights: the runtime reads the same head


def test_layer_mix_reads_the_same_features_from_cached_layers_as_from_the_blocks() -> None:
    torch.manual_seed(0)
    encoder = WhisperEncoder(2)
    model = EmotionModel(encoder, torch.nn.LayerNorm(512), EmotionHead(HeadConfig(hidden=16, dropout=0.0)), (1, 2))
    with torch.no_grad():
        model.layer_mix.copy_(torch.tensor([0.3, -0.4]))
    x = torch.randn(2, 10, 512)
    first = encoder.layers[0](x)
    second = encoder.layers[1](first)
    weights = torch.softmax(torch.tensor([0.3, -0.4]), dim=0)
    expected = torch.nn.functional.layer_norm(weights[0] * first + weights[1] * second, (512,))
    from_blocks = model.features(x, start_layer=0, hidden=x)
    from_cache = model.features(x, start_layer=2, hidden=torch.cat([first, second], dim=-1))
    assert torch.allclose(from_blocks, expected, atol=1e-5)
    assert torch.allclose(from_cache, expected, atol=1e-5)
    from_cache.sum().backward()  # the mix weights learn
    assert model.layer_mix.grad is not None and model.layer_mix.grad.abs().sum() > 0


def test_concat_join_reads_each_block_normalised_side_by_side() -> None:
    torch.manual_seed(0)
    encoder = WhisperEncoder(2)
    norm = torch.nn.LayerNorm(512)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    model = EmotionModel(encoder, norm, EmotionHead(HeadConfig(hidden=16, dropout=0.0), 1024), (1, 2), "concat")
    assert model.layer_mix is None  # nothing to mix: the head weighs the blocks itself
    x = torch.randn(2, 10, 512)
    first = encoder.layers[0](x)
    second = encoder.layers[1](first)
    expected = torch.cat([norm(first), norm(second)], dim=-1)
    from_blocks = model.features(x, start_layer=0, hidden=x)
    from_cache = model.features(x, start_layer=2, hidden=torch.cat([first, second], dim=-1))
    assert from_blocks.shape == (2, 10, 1024)
    assert torch.allclose(from_blocks, expected, atol=1e-5) and torch.allclose(from_cache, expected, atol=1e-5)
    frame_logits, clip_logits = model(torch.randn(1, 80, 40))
    assert frame_logits.shape == (1, 20, 8) and clip_logits.shape == (1, 8)
    with pytest.raises(ValueError, match=r"head reads 512 features; mix_layers \[1, 2\] joined by 'concat' give 1024"):
        EmotionModel(WhisperEncoder(2), torch.nn.LayerNorm(512), EmotionHead(HeadConfig(hidden=16)), (1, 2), "concat")
    with pytest.raises(ValueError, match="layer_join must be one of"):
        EmotionModel(WhisperEncoder(2), torch.nn.LayerNorm(512), EmotionHead(HeadConfig(hidden=16)), (1, 2), "sum")


def test_layer_mix_refuses_blocks_it_cannot_read() -> None:
    head = EmotionHead(HeadConfig(hidden=16))
    for bad in [(2,), (1, 1, 2), (0, 2), (1, 2, 3), (1,)]:
        with pytest.raises(ValueError, match="mix_layers"):
            EmotionModel(WhisperEncoder(2), torch.nn.LayerNorm(512), head, bad)
    model = EmotionModel(WhisperEncoder(2), torch.nn.LayerNorm(512), head, (1, 2))
    with pytest.raises(ValueError, match="cannot give the outputs of blocks"):
        model.features(torch.randn(1, 4, 512), start_layer=1, hidden=torch.randn(1, 4, 512))


def test_a_layer_mix_recipe_is_checked_before_training() -> None:
    assert load_config(None, ["mix_layers=[1,2,3]"]).mix_layers == [1, 2, 3]
    for bad, message in [("mix_layers=[2]", "two or more increasing ints"), ("mix_layers=[1,2]", "ending with"),
                         ("mix_layers=[3,2]", "increasing"), ("mix_layers=[0,3]", "in 1..3")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="needs trainable_layers 0"):
        load_config(None, ["mix_layers=[2,3]", "trainable_layers=1"])
    assert load_config(None, ["mix_layers=[2,3]", "layer_join=concat"]).layer_join == "concat"
    with pytest.raises(ConfigError, match="layer_join 'concat' needs mix_layers"):
        load_config(None, ["layer_join=concat"])
    with pytest.raises(ConfigError, match="layer_join"):
        load_config(None, ["mix_layers=[2,3]", "layer_join=sum"])


def test_last_epoch_must_fall_inside_the_schedule() -> None:
    assert load_config(None, ["epochs=10", "last_epoch=9"]).last_epoch == 9
    with pytest.raises(ConfigError, match="last_epoch 10 is past the schedule's last epoch"):
        load_config(None, ["epochs=10", "last_epoch=10"])
