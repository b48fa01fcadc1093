"""Prosody: eGeMAPS functionals of a window, scored by a linear classifier fused with the encoder's head.

The Whisper encoder was trained for speech recognition and carries pitch and loudness cues only in part.
A model may carry a second, independent reader of the signal: openSMILE's eGeMAPSv02 functionals (88
statistics of pitch, loudness, voice quality and spectral balance over the whole window), standardised and
scored by multinomial logistic regression. Its class log-probabilities, times ``weight``, are added to the
window's clip logits (and to each of its per-second logits), so the fused scores are a weighted product of
the two classifiers' probabilities. For a model merged from several members (``trainer.ensemble``) each member
keeps its own classifier and their log-probabilities are averaged, as the encoder heads' logits are.

Tensors in ``model.safetensors`` (K members, C classes, F = 88 functionals): ``prosody.mean`` (K, F) and
``prosody.scale`` (K, F) standardise, ``prosody.weight`` (K, C, F) and ``prosody.bias`` (K, C) classify;
``model.json`` ``prosody`` = ``{"feature_set": "eGeMAPSv02", "weight": w}``, and optionally ``"fit": {"c": C,
"trim_db": dB or null}``, how it was fitted (trainer/prosody.py), for the record.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_ser.types import SAMPLE_RATE

if TYPE_CHECKING:
    from edge_ser.backends.base import FrameScores

FEATURE_SET = "eGeMAPSv02"
N_FUNCTIONALS = 88
TENSORS = ("prosody.mean", "prosody.scale", "prosody.weight", "prosody.bias")


def without_prosody(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checkpoint's tensors less the prosody classifier's (what the encoder model itself is built from)."""
    return {name: value for name, value in tensors.items() if name not in TENSORS}


class ProsodyError(ValueError):
    """A prosody classifier's metadata or tensors are inconsistent; the message names the problem."""


class Functionals:
    """eGeMAPSv02 functionals of 16 kHz mono audio, one openSMILE extractor per thread (they keep state).
    A window too short for openSMILE's analysis (about 0.1 s) gives NaN functionals."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _smile(self) -> Any:
        smile = getattr(self._local, "smile", None)
        if smile is None:
            import opensmile  # imported on first use: models without prosody never load openSMILE

            smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                    feature_level=opensmile.FeatureLevel.Functionals)
            self._local.smile = smile
        return smile

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """(88,) float32 functionals of ``samples`` (float, 16 kHz mono)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Segment too short")
            row = self._smile().process_signal(np.asarray(samples, dtype=np.float32), SAMPLE_RATE).to_numpy()
        return row[0].astype(np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class ProsodyHead:
    """K standardise-then-logistic-regression classifiers on the functionals, and the fusion weight."""

    mean: np.ndarray  # (K, F)
    scale: np.ndarray  # (K, F)
    weight: np.ndarray  # (K, C, F)
    bias: np.ndarray  # (K, C)
    fusion_weight: float
    fit: dict[str, Any] | None = None
    """How it was fitted, for the record (``{"c": C, "trim_db": dB or None}``); None when not known."""

    def log_probs(self, functionals: np.ndarray) -> np.ndarray:
        """(N, C) class log-probabilities of (N, F) functionals, averaged over the members. A functional that
        is NaN (a window too short to measure) reads as the training mean."""
        z = np.nan_to_num((functionals[:, None, :] - self.mean) / self.scale, nan=0.0)  # (N, K, F)
        logits = np.einsum("nkf,kcf->nkc", z, self.weight) + self.bias
        return log_softmax(logits).mean(axis=1).astype(np.float32)

    def logit_bias(self, functionals: np.ndarray) -> np.ndarray:
        """(N, C) what is added to each window's clip logits: ``fusion_weight`` x the log-probabilities."""
        return (self.fusion_weight * self.log_probs(functionals)).astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        return dict(zip(TENSORS, (self.mean, self.scale, self.weight, self.bias), strict=True))

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"feature_set": FEATURE_SET, "weight": self.fusion_weight}
        return meta if self.fit is None else {**meta, "fit": dict(self.fit)}

    @classmethod
    def from_tensors(cls, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> ProsodyHead:
        return cls(*(np.asarray(tensors[name], dtype=np.float32) for name in TENSORS),
                   fusion_weight=float(meta["weight"]), fit=meta.get("fit"))

    @classmethod
    def merge(cls, heads: Sequence[ProsodyHead]) -> ProsodyHead:
        """One head whose log-probabilities are the mean of ``heads``' (all with the same fusion weight and
        fitting recipe)."""
        weights = {head.fusion_weight for head in heads}
        if len(weights) != 1:
            raise ProsodyError(f"cannot merge prosody classifiers with different fusion weights {sorted(weights)}")
        fits = [head.fit for head in heads]
        if any(fit != fits[0] for fit in fits):
            raise ProsodyError(f"cannot merge prosody classifiers fitted differently: {fits}")
        return cls(*(np.concatenate([getattr(h, name) for h in heads]) for name in ("mean", "scale", "weight", "bias")),
                   fusion_weight=weights.pop(), fit=fits[0])


def prosody_problem(meta: Any, tensors: dict[str, np.ndarray], n_classes: int) -> str | None:
    """Why ``model.json``'s ``prosody`` entry and the ``prosody.*`` tensors cannot be used (None when they can)."""
    if not (isinstance(meta, dict) and set(meta) - {"fit"} == {"feature_set", "weight"}):
        return f"'prosody' must be null or an object with 'feature_set', 'weight' (and 'fit'), got {meta!r:.80}"
    fit_problem = _fit_problem(meta.get("fit"))
    if fit_problem:
        return fit_problem
    if meta["feature_set"] != FEATURE_SET:
        return f"prosody.feature_set {meta['feature_set']!r:.40}: only {FEATURE_SET!r} is known"
    weight = meta["weight"]
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 10:
        return f"prosody.weight must be a number in 0..10, got {weight!r:.40}"
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        return f"missing tensors {missing}"
    members = tensors["prosody.mean"].shape[0] if tensors["prosody.mean"].ndim == 2 else -1
    shapes = {"prosody.mean": (members, N_FUNCTIONALS), "prosody.scale": (members, N_FUNCTIONALS),
              "prosody.weight": (members, n_classes, N_FUNCTIONALS), "prosody.bias": (members, n_classes)}
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape or members < 1:
            return (f"tensor {name!r} has shape {tuple(tensors[name].shape)}; expected {shape} ({n_classes} labels, "
                    f"{N_FUNCTIONALS} functionals)")
    if np.any(tensors["prosody.scale"] <= 0):
        return "tensor 'prosody.scale' must be positive"
    return None


def _fit_problem(fit: Any) -> str | None:
    """Why ``prosody.fit`` (optional: how the classifier was fitted) cannot be read, or None."""
    if fit is None:
        return None
    if not (isinstance(fit, dict) and set(fit) == {"c", "trim_db"}):
        return f"prosody.fit must be an object with 'c' and 'trim_db', got {fit!r:.80}"
    for key, value in fit.items():
        number = not isinstance(value, bool) and isinstance(value, int | float) and value > 0
        if not (number or (key == "trim_db" and value is None)):
            expected = "a positive number or null" if key == "trim_db" else "a positive number"
            return f"prosody.fit.{key} must be {expected}, got {value!r:.40}"
    return None


def load_prosody(model_dir: str | Path) -> ProsodyScorer | None:
    """The prosody scorer of the model in ``model_dir`` (its weights checked against ``model.json``), or None
    when the model has none."""
    from edge_ser.checkpoint import CheckpointError, load_checkpoint, read_meta

    if read_meta(model_dir).prosody is None:  # model.json only: no second read and hash of the weights
        return None
    try:
        import opensmile  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{model_dir}: the model fuses a prosody classifier on openSMILE's {FEATURE_SET} "
                              "functionals, and openSMILE is not installed: pip install 'edge-ser[prosody]' "
                              "(audEERING research license: non-commercial use)") from None
    meta, tensors = load_checkpoint(model_dir)  # checks the prosody tensors against model.json
    if meta.prosody is None:  # model.json was replaced since it was read
        return None
    return ProsodyScorer(ProsodyHead.from_tensors(meta.prosody, tensors))


class ProsodyScorer:
    """Adds a model's prosody term to engine scores, given each window's samples (the agent's batcher and the
    trainer's stream scoring call it after ``Engine.infer``)."""

    def __init__(self, head: ProsodyHead) -> None:
        self.head = head
        self.functionals = Functionals()

    def bias(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(N, C) logit bias for N windows of samples."""
        return self.head.logit_bias(np.stack([self.functionals(samples) for samples in windows]))

    def apply(self, scores: Sequence[FrameScores], windows: Sequence[np.ndarray]) -> list[FrameScores]:
        if len(scores) != len(windows):
            raise ValueError(f"{len(scores)} scores for {len(windows)} windows")
        if not scores:
            return []
        return [replace(s, bias=b) for s, b in zip(scores, self.bias(windows), strict=True)]
