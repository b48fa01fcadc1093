"""The emotion model in PyTorch: a (truncated) Whisper encoder built from CTranslate2 weights + emotion head.

Shared by the trainer (which adds the domain-adversarial head) and the runtime's ``torch`` backend.
Layout of ``EmotionModel``:

    log-mel (B, 80, T) -> conv1/conv2 (frozen) -> + positions -> encoder layers [0, n_layers)
    -> ``norm`` (LayerNorm, initialised from Whisper's final ``encoder/layer_norm``) -> per-frame head

With ``mix_layers`` (e.g. (2, 3)) the head reads those blocks' outputs instead of the last block's alone
(emotion is most readable in the middle of the encoder), joined by ``layer_join``: ``mix``, the LayerNorm reads a
learned softmax-weighted sum of them; ``concat``, each passes through the LayerNorm and the head reads them side
by side (its input k x 512 wide).

Because the features pass through one LayerNorm after the last layer kept, a truncated encoder whose final
layer norm is ``norm`` is exactly CTranslate2's Whisper ``encode`` on a model with fewer layers: the export
to CTranslate2 is exact (engines/ct2.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_ser.checkpoint import (
    LAYER_JOINS,
    CheckpointError,
    ModelMeta,
    head_width,
    learns_layer_mix,
    load_checkpoint,
    mix_layers_problem,
)
from edge_ser.ct2_format import LAYER_MAP, read_model
from edge_ser.linear_probe import without_probes
from edge_ser.prosody import ProsodyHead
from edge_ser.whisper_base import resolve_base
from edge_ser.window_stats import StatsHead

D_MODEL = 512
N_HEADS = 8
MAX_POSITIONS = 1500


class EncoderLayer(nn.Module):
    """Whisper's pre-norm transformer block: self-attention then GELU feed-forward, both residual."""

    def __init__(self, d_model: int = D_MODEL, n_heads: int = N_HEADS) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        batch, frames, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).chunk(3, dim=-1)
        shape = (batch, frames, self.n_heads, width // self.n_heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        mask = None
        if key_padding is not None:  # True where the frame is padding: never attended to
            mask = ~key_padding[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, frames, width))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class WhisperEncoder(nn.Module):
    """Whisper's encoder without its final layer norm, keeping the first ``n_layers`` blocks."""

    def __init__(self, n_layers: int, n_mels: int = 80, d_model: int = D_MODEL) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(MAX_POSITIONS, d_model), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(d_model) for _ in range(n_layers))

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log-mel with T even and <= 3000 -> (B, T // 2, d_model) before any block."""
        if mel.shape[-1] % 2 or mel.shape[-1] > 2 * MAX_POSITIONS:
            raise ValueError(f"the encoder needs an even number of mel frames <= 3000, got {mel.shape[-1]}")
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        return x + self.positions[: x.shape[1]]

    def run_layers(
        self, x: torch.Tensor, start: int = 0, stop: int | None = None, key_padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layers[start:stop]:
            x = layer(x, key_padding)
        return x

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.run_layers(self.embed(mel))

    def freeze_front_end(self) -> None:
        for module in (self.conv1, self.conv2):
            for param in module.parameters():
                param.requires_grad_(False)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32).copy())


def load_whisper_encoder(model_bin: str | Path, n_layers: int) -> tuple[WhisperEncoder, nn.LayerNorm]:
    """Build the first ``n_layers`` of the encoder (and its final LayerNorm) from a CTranslate2 ``model.bin``."""
    spec = read_model(model_bin, only_prefix="encoder/").variables
    available = sum(1 for name in spec if name.endswith("/self_attention/linear_0/weight"))
    if not 0 <= n_layers <= available:
        raise ValueError(f"{model_bin}: asked for {n_layers} encoder layers, the model has {available}")
    n_mels = spec["encoder/conv1/weight"].shape[1]
    encoder = WhisperEncoder(n_layers, n_mels=n_mels)
    with torch.no_grad():
        encoder.conv1.weight.copy_(_t(spec["encoder/conv1/weight"]))
        encoder.conv1.bias.copy_(_t(spec["encoder/conv1/bias"]))
        encoder.conv2.weight.copy_(_t(spec["encoder/conv2/weight"]))
        encoder.conv2.bias.copy_(_t(spec["encoder/conv2/bias"]))
        encoder.positions.copy_(_t(spec["encoder/position_encodings/encodings"]))
        for index, layer in enumerate(encoder.layers):
            load_layer(layer, spec, index)
        norm = nn.LayerNorm(encoder.conv1.out_channels)
        norm.weight.copy_(_t(spec["encoder/layer_norm/gamma"]))
        norm.bias.copy_(_t(spec["encoder/layer_norm/beta"]))
    return encoder, norm


def load_layer(layer: EncoderLayer, spec: dict[str, np.ndarray], index: int) -> None:
    params = dict(layer.named_parameters())
    for torch_name, ct2_name in LAYER_MAP.items():
        params[torch_name].data.copy_(_t(spec[f"encoder/layer_{index}/{ct2_name}"]))


@dataclass(frozen=True, slots=True)
class HeadConfig:
    """The emotion head: ``frame`` (per-frame MLP, clip = mean of frame logits) or ``attentive`` pooling."""

    type: str = "frame"
    hidden: int = 256
    dropout: float = 0.1
    input_dropout: float = 0.0
    n_classes: int = 8


class EmotionHead(nn.Module):
    """Per-frame logits (B, F, C); clip logits by masked mean (``frame``) or attention weights (``attentive``)."""

    def __init__(self, config: HeadConfig, d_model: int = D_MODEL) -> None:
        super().__init__()
        if config.type not in ("frame", "attentive"):
            raise ValueError(f"head type must be 'frame' or 'attentive', got {config.type!r}")
        self.config = config
        self.fc1 = nn.Linear(d_model, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.n_classes)
        self.dropout = nn.Dropout(config.dropout)
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.attention = nn.Linear(config.hidden, 1) if config.type == "attentive" else None
        self.stats: StatsTerm | None = None  # a fitted window-statistics classifier (edge_ser.window_stats)

    def frame_outputs(
        self, x: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, F, D), valid (B, F) bool -> frame logits (B, F, C), pooling weights (B, F) summing to 1 over
        valid frames, and the hidden activations (B, F, hidden) that the domain-adversarial head reads."""
        hidden = self.dropout(F.gelu(self.fc1(self.input_dropout(x)), approximate="tanh"))
        frame_logits = self.fc2(hidden)
        if self.stats is not None:
            frame_logits = frame_logits + self.stats(x, valid)[:, None, :]
        if self.attention is None:
            weights = valid.float() / valid.float().sum(dim=1, keepdim=True).clamp(min=1.0)
        else:
            scores = self.attention(hidden).squeeze(-1).masked_fill(~valid, -math.inf)
            weights = torch.softmax(scores, dim=1)
        return frame_logits, weights, hidden

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, F, D), valid (B, F) bool -> (frame logits (B, F, C), clip logits (B, C))."""
        frame_logits, weights, _ = self.frame_outputs(x, valid)
        return frame_logits, torch.einsum("bf,bfc->bc", weights, frame_logits)


class StatsTerm(nn.Module):
    """``edge_ser.window_stats.StatsHead`` in torch: the fused log-probabilities of each window's feature mean
    and standard deviation over its valid frames, (B, C). Fitted, not trained: its tensors are buffers outside
    the state dict."""

    def __init__(self, head: StatsHead) -> None:
        super().__init__()
        for name in ("mean", "scale", "weight", "bias"):
            self.register_buffer(name, torch.from_numpy(np.array(getattr(head, name), dtype=np.float32)),
                                 persistent=False)
        self.fusion_weight = head.fusion_weight

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = valid.to(x.dtype)[..., None]
        count = w.sum(dim=1).clamp(min=1.0)
        mean = (x * w).sum(dim=1) / count
        std = (((x - mean[:, None, :]) ** 2 * w).sum(dim=1) / count).sqrt()
        z = (torch.cat([mean, std], dim=-1)[:, None, :] - self.mean) / self.scale  # (B, K, F)
        logits = torch.einsum("bkf,kcf->bkc", z, self.weight) + self.bias
        return self.fusion_weight * torch.log_softmax(logits, dim=-1).mean(dim=1)


class EmotionModel(nn.Module):
    """Truncated Whisper encoder + final LayerNorm + emotion head; optional class-prior correction."""

    def __init__(self, encoder: WhisperEncoder, norm: nn.LayerNorm, head: EmotionHead,
                 mix_layers: Sequence[int] = (), layer_join: str = "mix") -> None:
        super().__init__()
        self.encoder = encoder
        self.norm = norm
        self.head = head
        self.mix_layers = tuple(mix_layers)
        self.layer_join = layer_join
        problem = mix_layers_problem(self.mix_layers, len(encoder.layers))
        if problem:
            raise ValueError(problem)
        if layer_join not in LAYER_JOINS:
            raise ValueError(f"layer_join must be one of {LAYER_JOINS}, got {layer_join!r}")
        width = head_width(self.mix_layers, layer_join, norm.normalized_shape[0])
        if head.fc1.in_features != width:
            raise ValueError(f"the head reads {head.fc1.in_features} features; mix_layers {list(self.mix_layers)} "
                             f"joined by {layer_join!r} give {width}")
        self.layer_mix = (nn.Parameter(torch.zeros(len(self.mix_layers)))
                          if learns_layer_mix(self.mix_layers, layer_join) else None)
        self.register_buffer("log_prior", torch.zeros(head.config.n_classes), persistent=False)

    def features(self, mel: torch.Tensor, start_layer: int = 0, hidden: torch.Tensor | None = None,
                 key_padding: torch.Tensor | None = None, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised encoder output; from ``mel``, or from cached ``hidden`` states entering ``start_layer``.
        With ``mix_layers``, cached states past the last block (``start_layer`` = the number of blocks) hold
        the mixed blocks' outputs side by side (B, F, k * D), and ``layer_join: concat`` returns (B, F, k * D)
        features, each block normalised on its own. ``offset`` (B, width), in the final LayerNorm's
        unscaled space, is subtracted after it (per-speaker centring, trainer/speaker_norm.py)."""
        x = self.encoder.embed(mel) if hidden is None else hidden
        if not self.mix_layers:
            feats = self.norm(self.encoder.run_layers(x, start_layer, key_padding=key_padding))
        else:
            if start_layer != len(self.encoder.layers):
                x = self.mixed_states(x, start_layer, key_padding)
            states = x.chunk(len(self.mix_layers), dim=-1)
            feats = self._mixed(states) if self.layer_mix is not None else torch.cat(
                [self.norm(s) for s in states], dim=-1)
        return feats if offset is None else feats - self.feature_scale() * offset[:, None, :]

    def feature_scale(self) -> torch.Tensor:
        """The final LayerNorm's scale for each feature the head reads (tiled over blocks side by side)."""
        return self.norm.weight.repeat(self.head.fc1.in_features // self.norm.weight.shape[0])

    def mixed_states(self, x: torch.Tensor, start_layer: int = 0, key_padding: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """The ``mix_layers`` blocks' outputs side by side (B, F, k * D), from states entering ``start_layer``
        (what the trainer's cache holds for a layer-mixing model)."""
        if start_layer >= self.mix_layers[0]:
            raise ValueError(f"states entering block {start_layer} cannot give the outputs of blocks "
                             f"{list(self.mix_layers)} to mix")
        outputs = []
        for index in range(start_layer, len(self.encoder.layers)):
            x = self.encoder.layers[index](x, key_padding)
            if index + 1 in self.mix_layers:
                outputs.append(x)
        return torch.cat(outputs, dim=-1)

    def _mixed(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """The final LayerNorm of the blocks' softmax-weighted sum."""
        weights = torch.softmax(self.layer_mix, dim=0)  # type: ignore[arg-type]
        return self.norm(sum((w * s for w, s in zip(weights, states, strict=True)), torch.zeros_like(states[0])))

    def forward(self, mel: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(mel)
        if valid is None:
            valid = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        frame_logits, clip_logits = self.head(feats, valid)
        return frame_logits - self.log_prior, clip_logits - self.log_prior


def model_from_checkpoint(
    meta: ModelMeta, tensors: dict[str, np.ndarray], base_model_bin: str | Path
) -> EmotionModel:
    """Rebuild the trained ``EmotionModel``: Whisper base layers, then the checkpoint's trained tensors."""
    encoder, norm = load_whisper_encoder(base_model_bin, meta.encoder_layers)
    head = EmotionHead(HeadConfig(**{**meta.head, "n_classes": len(meta.labels)}),
                       head_width(meta.mix_layers, meta.layer_join, D_MODEL))
    model = EmotionModel(encoder, norm, head, meta.mix_layers, meta.layer_join)
    state = model.state_dict()
    trained = without_probes(tensors, ProsodyHead, StatsHead)  # prosody: scored outside, from the samples
    unknown = sorted(set(trained) - set(state))
    if unknown:
        raise CheckpointError(f"checkpoint {meta.model_id}: tensors {unknown} do not belong to this model")
    for name, value in trained.items():
        if tuple(state[name].shape) != value.shape:
            raise CheckpointError(
                f"checkpoint {meta.model_id}: tensor {name} has shape {value.shape}, "
                f"the model expects {tuple(state[name].shape)}"
            )
    model.load_state_dict({name: torch.from_numpy(np.array(v)) for name, v in trained.items()}, strict=False)
    if meta.stats is not None:
        blocks = head.fc1.in_features // D_MODEL
        gamma, beta = (np.tile(tensors[f"norm.{n}"].astype(np.float32), blocks) for n in ("weight", "bias"))
        head.stats = StatsTerm(StatsHead.from_tensors(meta.stats, tensors).in_feature_space(gamma, beta))
    if meta.class_log_prior is not None:
        model.log_prior.copy_(torch.tensor(meta.class_log_prior, dtype=torch.float32))
    return model.eval()


def load_emotion_model(folder: str | Path, base_dir: str | Path | None = None) -> tuple[EmotionModel, ModelMeta]:
    """Load a checkpoint folder (checksum verified, no pickle) on top of the whisper-base weights."""
    meta, tensors = load_checkpoint(folder)
    return model_from_checkpoint(meta, tensors, resolve_base(base_dir) / "model.bin"), meta
