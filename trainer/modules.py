"""Training-time modules: gradient reversal, the domain-adversarial head, and the module the loop optimises.

``TrainModule`` wraps the shared ``EmotionModel``. It runs either from cached frozen-layer states (the CPU
recipe: only the fine-tuned layers, the final LayerNorm and the heads run) or from log-mel end to end (the
frozen front end and layers under ``no_grad``). The domain head reads the masked mean of the emotion head's
hidden activations through a gradient reversal layer, so the shared representation is pushed to forget the
corpus or speaker while the domain head itself learns to predict it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from edge_ser.model import EmotionModel
from trainer.cache import masked_frame_mean
from trainer.regularize import StyleMix, mix_statistics


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight = weight  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.weight * grad, None  # type: ignore[attr-defined]


def gradient_reversal(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by ``-weight``."""
    return _Reverse.apply(x, weight)  # type: ignore[no-any-return]


class DomainHead(nn.Module):
    """MLP from pooled head activations to corpus or speaker logits."""

    def __init__(self, width: int, hidden: int, n_domains: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, n_domains))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


class TrainOutputs(NamedTuple):
    """What one training forward pass gives: clip logits, domain logits (None without a domain head), the
    head's frame-averaged hidden activations (what the domain head and the cross-corpus contrast read) and the
    frame logits (B, F, C) the clip logits average."""

    clip_logits: torch.Tensor
    domain_logits: torch.Tensor | None
    pooled: torch.Tensor
    frame_logits: torch.Tensor


class TrainModule(nn.Module):
    """What DDP wraps: the emotion model from layer ``start_layer`` on, plus the optional domain head."""

    def __init__(self, model: EmotionModel, start_layer: int, n_domains: int = 0, domain_hidden: int = 128) -> None:
        super().__init__()
        self.model = model
        self.start_layer = start_layer
        width = model.head.config.hidden
        self.domain = DomainHead(width, domain_hidden, n_domains) if n_domains > 1 else None
        self.reversal_weight = 0.0

    def encode(self, x: torch.Tensor, valid: torch.Tensor, from_mel: bool, offset: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Normalised features (B, F, D): from cached states entering ``start_layer``, or from log-mel;
        ``offset``: per-speaker centring (``EmotionModel.features``)."""
        encoder = self.model.encoder
        if from_mel:
            with torch.no_grad():
                x = encoder.embed(x)
                if self.model.mix_layers:  # the frozen blocks' outputs side by side, as the cache holds them
                    x = self.model.mixed_states(x, 0, key_padding=~valid)
                else:
                    x = encoder.run_layers(x, 0, self.start_layer, key_padding=~valid)
        return self.model.features(x, start_layer=self.start_layer, hidden=x, key_padding=~valid, offset=offset)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, from_mel: bool = False,
                offset: torch.Tensor | None = None, style: StyleMix | None = None) -> TrainOutputs:
        """Clip logits (B, C) (without prior correction), domain logits (B, n_domains) or None, the head's
        hidden activations averaged over valid frames (B, hidden), and the frame logits (B, F, C).
        ``style``: rows whose normalised features take part of another row's statistics before the head."""
        feats = self.encode(x, valid, from_mel, offset)
        if style is not None:
            feats = mix_statistics(feats, valid, style)
        frame_logits, weights, hidden = self.model.head.frame_outputs(feats, valid)
        clip_logits = torch.einsum("bf,bfc->bc", weights, frame_logits)
        pooled = masked_frame_mean(hidden, valid)
        if self.domain is None:
            return TrainOutputs(clip_logits, None, pooled, frame_logits)
        return TrainOutputs(clip_logits, self.domain(gradient_reversal(pooled, self.reversal_weight)), pooled,
                            frame_logits)


class WeightAverage:
    """Exponential moving average of a module's trainable parameters, swapped in for evaluation and saving.

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` so early averages are not dominated by the
    random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach(), 1.0 - decay)

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``module``."""
        params = dict(module.named_parameters())
        backup = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    params[name].copy_(value)
