"""The emotion-model checkpoint: a self-describing folder, loaded without pickle.

    <folder>/model.json          metadata: format, model id, labels, encoder layers kept, fine-tuned layers,
                                 head config, feature params, class prior, window defaults, training data,
                                 metrics, and the sha256 of the weights file
    <folder>/model.safetensors   the trained tensors only: ``norm.*``, ``head.*``, for fine-tuned encoder
                                 layers ``encoder.layers.<i>.*`` (the rest comes from the Whisper base), and
                                 for a model with a prosody classifier ``prosody.*`` (edge_ser.prosody), for
                                 one with a window-statistics classifier ``stats.*`` (edge_ser.window_stats)

The runtime is never told separately what the model expects: everything it needs is in ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from edge_ser.features import FeatureParams
from edge_ser.prosody import prosody_problem
from edge_ser.window_stats import stats_problem

FORMAT = "edge-ser-emotion-model/1"
META_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
LAYER_JOINS = ("mix", "concat")
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
    features: dict[str, int | float]
    finetuned_layers: list[int] = field(default_factory=list)
    mix_layers: list[int] = field(default_factory=list)
    """Encoder blocks whose outputs the head reads (joined by ``layer_join``); empty: the last block alone."""
    layer_join: str = "mix"
    """``mix``: the final LayerNorm reads a learned softmax-weighted sum of the ``mix_layers`` (tensor
    ``layer_mix``); ``concat``: each block's output passes through it and the head reads them side by side."""
    base: dict[str, Any] = field(default_factory=lambda: {"name": "whisper-base"})
    class_log_prior: list[float] | None = None
    window: dict[str, float] = field(default_factory=lambda: {"window_s": 2.0, "hop_s": 1.0})
    speaker_norm: dict[str, Any] | None = None
    """``reference``: the training data's mean of standardised encoder features (the final LayerNorm's unscaled
    space), which stream adaptation centres each stream on (edge_ser.centring); ``trained``: true when the head
    was trained on speaker-centred features (``normalize: speaker``), so it must be centred at inference."""
    prosody: dict[str, Any] | None = None
    """``{"feature_set": "eGeMAPSv02", "weight": w}`` when the model fuses a prosody classifier (tensors
    ``prosody.*``, edge_ser.prosody) into its scores; null when it does not."""
    stats: dict[str, Any] | None = None
    """``{"weight": w}`` when the model fuses a classifier of each window's feature mean and standard deviation
    (tensors ``stats.*``, edge_ser.window_stats) into its scores; null when it does not."""
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
    tmp.chmod(0o644)  # safetensors writes 0600; a model is read by the agent's service user, as model.json is
    tmp.replace(weights)
    meta.weights_sha256 = sha256_bytes(weights)
    _write_meta(folder, meta)
    return folder


def update_meta(folder: str | Path, meta: ModelMeta, tensors: dict[str, np.ndarray]) -> None:
    """Rewrite only ``model.json`` of a checkpoint (the weights file and its sha256 stay as they are);
    ``tensors`` are the folder's weights, to check the new metadata against."""
    folder = Path(folder)
    _check_meta(folder / META_FILE, meta)
    _check_tensors(folder / WEIGHTS_FILE, meta, tensors)
    if sha256_bytes(folder / WEIGHTS_FILE) != meta.weights_sha256:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: not the weights model.json describes")
    _write_meta(folder, meta)


def _write_meta(folder: Path, meta: ModelMeta) -> None:
    meta_tmp = folder / (META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    meta_tmp.replace(folder / META_FILE)


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


def mix_layers_problem(mix: Any, n_layers: int) -> str | None:
    """Why ``mix`` cannot name the encoder blocks a model mixes (None when it can): two or more increasing
    1-based block numbers ending with the last block, ``n_layers``, or empty."""
    if isinstance(mix, list | tuple) and not mix:
        return None
    if (not isinstance(mix, list | tuple) or not all(_is_int(i) for i in mix) or list(mix) != sorted(set(mix))
            or len(mix) < 2 or mix[0] < 1 or mix[-1] != n_layers):
        return (f"mix_layers {mix!r:.60} must be two or more increasing ints in 1..{n_layers} ending with "
                f"{n_layers}, or empty")
    return None


def learns_layer_mix(mix_layers: Sequence[int], layer_join: str) -> bool:
    """Whether the model reads a learned weighted sum of ``mix_layers`` (a ``layer_mix`` tensor of its own)."""
    return bool(mix_layers) and layer_join == "mix"


def blocks_read(meta: ModelMeta) -> tuple[int, ...]:
    """The encoder blocks (1-based) whose normalised outputs the head reads, side by side: the last block, or
    ``mix_layers`` (joined as ``layer_join`` says)."""
    return tuple(meta.mix_layers) if meta.mix_layers else (meta.encoder_layers,)


def head_width(mix_layers: Sequence[int], layer_join: str, d_model: int) -> int:
    """The width of the features the emotion head reads: k x ``d_model`` for k blocks side by side."""
    return d_model * len(mix_layers) if mix_layers and layer_join == "concat" else d_model


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _feature_value_ok(key: str, value: Any) -> bool:
    """``level_db`` is a level in dBFS (any number), ``trim_db`` a positive number, the rest positive ints."""
    if key == "level_db":
        return _is_number(value)
    return (_is_number(value) if key == "trim_db" else _is_int(value)) and value > 0


def _check_types(path: Path, meta: ModelMeta) -> None:
    """Every field has the JSON type the runtime relies on (a damaged or hand-edited file fails here)."""
    expected: list[tuple[str, type | tuple[type, ...], str]] = [
        ("model_id", str, "a string"), ("labels", list, "a list of strings"), ("head", dict, "an object"),
        ("features", dict, "an object"), ("finetuned_layers", list, "a list of ints"),
        ("mix_layers", list, "a list of ints"), ("layer_join", str, "a string"), ("base", dict, "an object"),
        ("window", dict, "an object"), ("training", dict, "an object"), ("metrics", dict, "an object"),
        ("weights_sha256", str, "a hex string"),
    ]
    for name, kind, what in expected:
        value = getattr(meta, name)
        if not isinstance(value, kind):
            raise CheckpointError(f"{path}: {name!r} must be {what}, got {type(value).__name__} {value!r:.60}")
    if not meta.model_id:
        raise CheckpointError(f"{path}: 'model_id' must not be empty")
    if not _is_int(meta.encoder_layers):
        raise CheckpointError(f"{path}: 'encoder_layers' must be an int, got {meta.encoder_layers!r:.60}")
    if not all(_feature_value_ok(k, v) for k, v in meta.features.items()):
        raise CheckpointError(f"{path}: 'features' values must be positive ints (trim_db: a positive number; "
                              f"level_db: a number), got {meta.features!r:.120}")
    try:
        FeatureParams(**meta.features)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: 'features' {meta.features!r:.120} are not usable: {exc}") from None
    if not all(_is_number(v) and v > 0 for v in meta.window.values()):
        raise CheckpointError(f"{path}: 'window' values must be positive numbers, got {meta.window!r:.120}")
    for name in ("prosody", "stats"):
        value = getattr(meta, name)
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{path}: {name!r} must be null or an object, got {value!r:.60}")
    prior = meta.class_log_prior
    if prior is not None and (not isinstance(prior, list) or not all(_is_number(v) for v in prior)):
        raise CheckpointError(f"{path}: 'class_log_prior' must be null or a list of numbers, got {prior!r:.60}")


def _check_meta(path: Path, meta: ModelMeta) -> None:
    _check_types(path, meta)
    if not meta.labels or not all(isinstance(x, str) and x for x in meta.labels):
        raise CheckpointError(f"{path}: 'labels' must be a non-empty list of strings, got {meta.labels!r:.120}")
    if not 0 <= meta.encoder_layers <= 32:
        raise CheckpointError(f"{path}: 'encoder_layers' must be an int in 0..32, got {meta.encoder_layers!r}")
    bad = [i for i in meta.finetuned_layers if not _is_int(i) or not 0 <= i < meta.encoder_layers]
    if bad:
        raise CheckpointError(f"{path}: 'finetuned_layers' {bad!r:.60} outside 0..{meta.encoder_layers - 1}")
    problem = mix_layers_problem(meta.mix_layers, meta.encoder_layers)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    if meta.layer_join not in LAYER_JOINS:
        raise CheckpointError(f"{path}: 'layer_join' must be one of {list(LAYER_JOINS)}, got {meta.layer_join!r:.60}")
    if meta.head.get("type") not in ("frame", "attentive"):
        raise CheckpointError(f"{path}: head.type must be 'frame' or 'attentive', got {meta.head.get('type')!r:.60}")
    norm = meta.speaker_norm
    if norm is not None and not (isinstance(norm, dict) and set(norm) == {"reference", "trained"}
                                 and isinstance(norm["reference"], list) and isinstance(norm["trained"], bool)
                                 and all(_is_number(v) for v in norm["reference"])):
        raise CheckpointError(f"{path}: 'speaker_norm' must be null or an object with a 'reference' list of "
                              f"numbers and a boolean 'trained', got {norm!r:.80}")
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
    if learns_layer_mix(meta.mix_layers, meta.layer_join) and "layer_mix" not in tensors:
        missing.append("layer_mix")
    if missing:
        raise CheckpointError(f"{path}: missing tensors {missing}")
    n_classes = len(meta.labels)
    d_model = tensors["norm.weight"].shape[0] if tensors["norm.weight"].ndim == 1 else -1
    hidden = tensors["head.fc1.weight"].shape[0] if tensors["head.fc1.weight"].ndim == 2 else -1
    width = head_width(meta.mix_layers, meta.layer_join, d_model)
    shapes = {"norm.weight": (d_model,), "norm.bias": (d_model,), "head.fc1.weight": (hidden, width),
              "head.fc1.bias": (hidden,), "head.fc2.weight": (n_classes, hidden), "head.fc2.bias": (n_classes,)}
    if meta.head.get("type") == "attentive":
        shapes |= {"head.attention.weight": (1, hidden), "head.attention.bias": (1,)}
    if learns_layer_mix(meta.mix_layers, meta.layer_join):
        shapes["layer_mix"] = (len(meta.mix_layers),)
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape or -1 in shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}; expected {shape} "
                                  f"({n_classes} labels, hidden {hidden}, d_model {d_model})")
    if meta.speaker_norm is not None and len(meta.speaker_norm["reference"]) != width:
        raise CheckpointError(f"{path}: speaker_norm.reference has {len(meta.speaker_norm['reference'])} values; "
                              f"expected one per feature the head reads, {width}")
    problem = ((meta.prosody is not None and prosody_problem(meta.prosody, tensors, n_classes))
               or (meta.stats is not None and stats_problem(meta.stats, tensors, n_classes, width)))
    if problem:
        raise CheckpointError(f"{path}: {problem}")
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
