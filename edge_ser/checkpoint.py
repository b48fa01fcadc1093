"""The emotion-model checkpoint: a self-describing folder, loaded without pickle.

    <folder>/model.json          metadata: format, model id, labels, encoder layers kept, fine-tuned layers,
                                 head config, feature params, class prior, window defaults, training data,
                                 metrics, and the sha256 of the weights file
    <folder>/model.safetensors   the trained tensors only: ``norm.*``, ``head.*`` and, for fine-tuned encoder
                                 layers, ``encoder.layers.<i>.*`` (the rest comes from the Whisper base)

The runtime is never told separately what the model expects: everything it needs is in ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

FORMAT = "edge-ser-emotion-model/1"
META_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
_HEAD_TENSORS = ("norm.weight", "norm.bias", "head.fc1.weight", "head.fc1.bias", "head.fc2.weight", "head.fc2.bias")


class CheckpointError(ValueError):
    """A checkpoint folder is missing, damaged or inconsistent; the message names the file and the problem."""


@dataclass
class ModelMeta:
    """Everything the runtime needs to know about a trained emotion model."""

    model_id: str
    labels: list[str]
    encoder_layers: int
    head: dict[str, Any]
    features: dict[str, int]
    finetuned_layers: list[int] = field(default_factory=list)
    base: dict[str, Any] = field(default_factory=lambda: {"name": "whisper-base"})
    class_log_prior: list[float] | None = None
    window: dict[str, float] = field(default_factory=lambda: {"window_s": 2.0, "hop_s": 1.0})
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_bytes(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(folder: str | Path, meta: ModelMeta, tensors: dict[str, np.ndarray]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (with the weights' sha256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}
    _check_tensors(folder / WEIGHTS_FILE, meta, arrays)
    weights = folder / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    save_file(arrays, str(tmp), metadata={"format": FORMAT, "model_id": meta.model_id})
    tmp.replace(weights)
    meta.weights_sha256 = sha256_bytes(weights)
    meta_tmp = folder / (META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    meta_tmp.replace(folder / META_FILE)
    return folder


def read_meta(folder: str | Path) -> ModelMeta:
    """Read and check ``model.json`` (no weights)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not an edge-ser model folder")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    known = set(ModelMeta.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown fields {unknown}")
    try:
        meta = ModelMeta(**raw)
    except TypeError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    _check_meta(path, meta)
    return meta


def _check_meta(path: Path, meta: ModelMeta) -> None:
    if not isinstance(meta.labels, list) or not meta.labels or not all(isinstance(x, str) for x in meta.labels):
        raise CheckpointError(f"{path}: 'labels' must be a non-empty list of strings, got {meta.labels!r}")
    if not isinstance(meta.encoder_layers, int) or not 0 <= meta.encoder_layers <= 32:
        raise CheckpointError(f"{path}: 'encoder_layers' must be an int in 0..32, got {meta.encoder_layers!r}")
    bad = [i for i in meta.finetuned_layers if not isinstance(i, int) or not 0 <= i < meta.encoder_layers]
    if bad:
        raise CheckpointError(f"{path}: 'finetuned_layers' {bad} outside 0..{meta.encoder_layers - 1}")
    if meta.head.get("type") not in ("frame", "attentive"):
        raise CheckpointError(f"{path}: head.type must be 'frame' or 'attentive', got {meta.head.get('type')!r}")
    if meta.class_log_prior is not None and len(meta.class_log_prior) != len(meta.labels):
        raise CheckpointError(
            f"{path}: class_log_prior has {len(meta.class_log_prior)} values for {len(meta.labels)} labels"
        )


def _check_tensors(path: Path, meta: ModelMeta, tensors: dict[str, np.ndarray]) -> None:
    required = list(_HEAD_TENSORS) + (["head.attention.weight", "head.attention.bias"]
                                      if meta.head.get("type") == "attentive" else [])
    missing = [name for name in required if name not in tensors]
    for index in meta.finetuned_layers:
        if not any(name.startswith(f"encoder.layers.{index}.") for name in tensors):
            missing.append(f"encoder.layers.{index}.*")
    if missing:
        raise CheckpointError(f"{path}: missing tensors {missing}")
    n_classes = len(meta.labels)
    if tensors["head.fc2.weight"].shape[0] != n_classes:
        raise CheckpointError(
            f"{path}: head.fc2.weight has {tensors['head.fc2.weight'].shape[0]} outputs for {n_classes} labels"
        )
    for name, value in tensors.items():
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: tensor {name!r} has NaN or infinite values")


def load_checkpoint(folder: str | Path) -> tuple[ModelMeta, dict[str, np.ndarray]]:
    """Read the metadata and the weights, verifying the weights' sha256 against ``model.json``."""
    folder = Path(folder)
    meta = read_meta(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    digest = sha256_bytes(weights)
    if digest != meta.weights_sha256:
        raise CheckpointError(
            f"{weights}: sha256 {digest[:16]}... does not match model.json ({meta.weights_sha256[:16]}...): "
            "the file is damaged or belongs to another model"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: cannot read safetensors ({exc})") from exc
    _check_tensors(weights, meta, tensors)
    return meta, tensors
