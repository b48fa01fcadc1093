"""The TensorRT backend (NVIDIA GPUs; the ``[gpu]`` extra): encoder + head compiled by torch-tensorrt with a
dynamic batch and window length, float16 or float32.

The compiled program is cached under ``<cache>/trt/`` by the checkpoint's weights hash, the GPU, the
TensorRT / torch-tensorrt / torch versions, the precision and the shape ranges; a sidecar JSON records them
and the sha256 of the program file, so a stale or damaged engine is rebuilt (with a warning saying why),
never used. torch and torch_tensorrt are imported only when this backend is chosen.

Status: written against torch-tensorrt's documented dynamo API (``torch_tensorrt.compile(ir="dynamo")``,
``torch_tensorrt.save`` / ``torch_tensorrt.load``) but **not yet run on a GPU** (no session so far was lent
one); ``tests/test_trt.py`` runs it wherever CUDA and torch-tensorrt are present and skips with the reason
elsewhere.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_ser.backends.base import Engine, FrameScores, group_by_length
from edge_ser.whisper_base import cache_root, sha256_file

log = logging.getLogger(__name__)

TRT_FORMAT = "edge-ser-trt/1"
MIN_FRAMES = 20  # mel frames (0.2 s): shorter windows are never scored (windows.min_window_s)


def import_tensorrt() -> tuple[Any, Any]:
    """(torch, torch_tensorrt), or a RuntimeError that says what to install."""
    try:
        import torch
        import torch_tensorrt
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"engine.type 'tensorrt' needs {exc.name}: pip install 'edge-ser[gpu]' (torch==2.13.0 + "
            "torch-tensorrt) on a machine with an NVIDIA GPU, or choose the 'ctranslate2' backend"
        ) from exc
    if not torch.cuda.is_available():
        raise RuntimeError("engine.type 'tensorrt' needs an NVIDIA GPU, but torch sees no CUDA device")
    return torch, torch_tensorrt


def frame_scorer(torch: Any, model: Any) -> Any:
    """The module TensorRT compiles: mel (B, 80, T) -> (frame logits (B, F, C), pooling weights (B, F))."""

    class FrameScorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, mel: Any) -> tuple[Any, Any]:
            feats = self.model.features(mel)
            valid = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
            logits, weights, _ = self.model.head.frame_outputs(feats, valid)
            return logits - self.model.log_prior, weights

    return FrameScorer().eval()


def engine_fingerprint(torch: Any, torch_tensorrt: Any, model_id: str, weights_sha256: str, precision: str,
                       max_batch: int, max_frames: int, window_stats: bool = True) -> dict[str, str]:
    """Everything a compiled engine depends on; any change means it is stale."""
    import tensorrt

    return {
        "format": TRT_FORMAT, "model_id": model_id, "weights_sha256": weights_sha256,
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "tensorrt": tensorrt.__version__, "torch_tensorrt": torch_tensorrt.__version__, "torch": torch.__version__,
        "precision": precision, "max_batch": str(max_batch), "max_frames": str(max_frames),
        "window_stats": str(window_stats),
    }


class TrtEngine(Engine):
    """The model compiled by torch-tensorrt; windows of one length share a call (batch <= ``max_batch``)."""

    supports_offsets = False  # the compiled program is mel -> scores; stream adaptation is not compiled in

    def __init__(self, model_dir: str | Path, base_dir: str | Path | None = None, precision: str = "float16",
                 max_batch: int = 32, max_window_s: float = 8.0, window_stats: bool = True) -> None:
        torch, torch_tensorrt = import_tensorrt()
        from edge_ser.model import load_emotion_model

        if precision not in ("float16", "float32"):
            raise ValueError(f"tensorrt precision {precision!r}; expected 'float16' or 'float32'")
        self._torch = torch
        model, self.meta = load_emotion_model(model_dir, base_dir)
        window_stats = window_stats and model.head.stats is not None
        if not window_stats:  # compiled without the model's window-statistics term (the agent's model.stats)
            model.head.stats = None
        self.labels = tuple(self.meta.labels)
        self.model_id = self.meta.model_id
        self.max_batch = max_batch
        self.max_frames = int(max_window_s * 100) // 2 * 2
        self._dtype = torch.float16 if precision == "float16" else torch.float32
        wanted = engine_fingerprint(torch, torch_tensorrt, self.model_id, self.meta.weights_sha256, precision,
                                    max_batch, self.max_frames, window_stats)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.model_id}-{self.meta.weights_sha256[:16]}-{wanted['gpu']}-"
                                                  f"{precision}-b{max_batch}-f{self.max_frames}"
                                                  f"{'' if window_stats else '-nostats'}")
        path = cache_root() / "trt" / f"{name}.ep"
        self.program = self._load(torch_tensorrt, path, wanted)
        if self.program is None:
            scorer = frame_scorer(torch, model).to("cuda").to(self._dtype)
            self.program = self._compile(torch, torch_tensorrt, scorer, path, wanted)
        log.info("tensorrt engine: model %s, %s, batch <= %d, windows <= %.1f s, %s", self.model_id, precision,
                 max_batch, self.max_frames / 100, path)

    def _load(self, torch_tensorrt: Any, path: Path, wanted: dict[str, str]) -> Any | None:
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            return None
        try:
            found = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("TensorRT engine %s rebuilt: %s unreadable (%s)", path, sidecar, exc)
            return None
        stale = [k for k, v in wanted.items() if found.get(k) != v]
        if stale:
            log.warning("TensorRT engine %s rebuilt: built for another %s (%s, now %s)", path, stale[0],
                        found.get(stale[0]), wanted[stale[0]])
            return None
        if not path.is_file() or sha256_file(path) != found.get("program_sha256"):
            log.warning("TensorRT engine %s rebuilt: the program file is missing or damaged (sha256)", path)
            return None
        return torch_tensorrt.load(str(path)).module()

    def _compile(self, torch: Any, torch_tensorrt: Any, scorer: Any, path: Path, wanted: dict[str, str]) -> Any:
        half = torch.export.Dim("half_frames", min=MIN_FRAMES // 2, max=self.max_frames // 2)
        batch = torch.export.Dim("batch", min=1, max=self.max_batch)
        example = torch.zeros((2, 80, 200), dtype=self._dtype, device="cuda")
        log.info("compiling the TensorRT engine (minutes, once per model / GPU / version): %s", path)
        exported = torch.export.export(scorer, (example,), dynamic_shapes={"mel": {0: batch, 2: 2 * half}})
        spec = torch_tensorrt.Input(min_shape=(1, 80, MIN_FRAMES), opt_shape=(8, 80, 200),
                                    max_shape=(self.max_batch, 80, self.max_frames), dtype=self._dtype)
        program = torch_tensorrt.dynamo.compile(exported, inputs=[spec], enabled_precisions={self._dtype},
                                                min_block_size=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        torch_tensorrt.save(program, str(tmp), inputs=[spec])
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps({**wanted, "program_sha256": sha256_file(path)}, indent=2))
        return program

    def infer(self, mels: Sequence[np.ndarray], offsets: Sequence[np.ndarray | None] | None = None
              ) -> list[FrameScores]:
        if offsets is not None and any(o is not None for o in offsets):
            raise ValueError("tensorrt engine: stream adaptation is not compiled in; set centring.enabled: false")
        torch = self._torch
        results: list[FrameScores | None] = [None] * len(mels)
        for frames, indices in group_by_length(mels).items():
            if not MIN_FRAMES <= frames <= self.max_frames:
                raise ValueError(f"tensorrt engine: window of {frames} mel frames outside the compiled range "
                                 f"{MIN_FRAMES}..{self.max_frames}")
            for start in range(0, len(indices), self.max_batch):
                part = indices[start:start + self.max_batch]
                batch = torch.from_numpy(np.stack([mels[i] for i in part])).to("cuda", self._dtype)
                with torch.inference_mode():
                    logits, weights = self.program(batch)
                logits_np = logits.float().cpu().numpy()
                weights_np = weights.float().cpu().numpy()
                for row, index in enumerate(part):
                    results[index] = FrameScores(logits=logits_np[row], weights=weights_np[row])
        return [r for r in results if r is not None]
