"""The reference backend: the trained model in PyTorch (CPU, or CUDA when asked and available)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_ser.backends.base import Engine, FrameScores, check_offsets, group_by_length
from edge_ser.centring import standardised_mean

log = logging.getLogger(__name__)


class TorchEngine(Engine):
    """Runs ``EmotionModel`` (truncated Whisper encoder + head) with torch.inference_mode."""

    def __init__(self, model_dir: str | Path, base_dir: str | Path | None = None, device: str = "cpu",
                 threads: int | None = None, window_stats: bool = True) -> None:
        try:
            import torch
        except ModuleNotFoundError as exc:
            raise RuntimeError(
                "the 'torch' backend needs PyTorch: pip install 'edge-ser[torch]' (torch==2.13.0), "
                "or choose the 'ctranslate2' backend"
            ) from exc
        from edge_ser.model import load_emotion_model

        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"torch backend: device {device!r} asked for, but CUDA is not available")
        self._torch = torch
        self.device = torch.device(device)
        self.model, self.meta = load_emotion_model(model_dir, base_dir)
        if not window_stats:  # the model's window-statistics term left out (the agent's model.stats: false)
            self.model.head.stats = None
        self.model.to(self.device)
        self.labels = tuple(self.meta.labels)
        self.model_id = self.meta.model_id
        norm = self.model.norm  # stream adaptation: the final LayerNorm's affine, to read feature means back
        self._affine = None if self.meta.speaker_norm is None else (
            norm.weight.detach().float().cpu().numpy(), norm.bias.detach().float().cpu().numpy())
        self._scale = self.model.feature_scale().detach()  # per feature the head reads, blocks side by side
        log.info("torch engine: model %s, %d encoder layers, device %s", self.model_id,
                 self.meta.encoder_layers, self.device)

    def infer(self, mels: Sequence[np.ndarray], offsets: Sequence[np.ndarray | None] | None = None
              ) -> list[FrameScores]:
        torch = self._torch
        shifts = check_offsets(offsets, len(mels), self._scale.shape[0])
        results: list[FrameScores | None] = [None] * len(mels)
        with torch.inference_mode():
            for indices in group_by_length(mels).values():
                batch = torch.from_numpy(np.stack([mels[i] for i in indices])).to(self.device)
                feats = self.model.features(batch)
                means = [None] * len(indices)
                if self._affine is not None:
                    host = feats.float().cpu().numpy()
                    means = [standardised_mean(host[row], *self._affine) for row in range(len(indices))]
                if any(shifts[i] is not None for i in indices):
                    offset = np.stack([np.zeros(feats.shape[-1], np.float32) if shifts[i] is None else shifts[i]
                                       for i in indices])
                    feats = feats - self._scale * torch.from_numpy(offset).to(feats)[:, None, :]
                valid = torch.ones(feats.shape[:2], dtype=torch.bool, device=self.device)
                frame_logits, weights, _ = self.model.head.frame_outputs(feats, valid)
                frame_logits = frame_logits - self.model.log_prior
                for row, index in enumerate(indices):
                    results[index] = FrameScores(
                        logits=frame_logits[row].float().cpu().numpy(), weights=weights[row].float().cpu().numpy(),
                        feature_mean=means[row],
                    )
        return [r for r in results if r is not None]
