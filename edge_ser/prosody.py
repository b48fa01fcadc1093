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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edge_ser.linear_probe import LinearProbe, tensors_problem, weight_problem
from edge_ser.types import SAMPLE_RATE

if TYPE_CHECKING:
    from edge_ser.backends.base import FrameScores

FEATURE_SET = "eGeMAPSv02"
N_FUNCTIONALS = 88


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


class ProsodyHead(LinearProbe):
    """K standardise-then-logistic-regression classifiers on the functionals, and the fusion weight;
    ``fit``: ``{"c": C, "trim_db": dB or None}``."""

    prefix: ClassVar[str] = "prosody"

    def meta(self) -> dict[str, Any]:
        return {"feature_set": FEATURE_SET, **super().meta()}


def prosody_problem(meta: Any, tensors: dict[str, np.ndarray], n_classes: int) -> str | None:
    """Why ``model.json``'s ``prosody`` entry and the ``prosody.*`` tensors cannot be used (None when they can)."""
    if not (isinstance(meta, dict) and set(meta) - {"fit"} == {"feature_set", "weight"}):
        return f"'prosody' must be null or an object with 'feature_set', 'weight' (and 'fit'), got {meta!r:.80}"
    fit_problem = _fit_problem(meta.get("fit"))
    if fit_problem:
        return fit_problem
    if meta["feature_set"] != FEATURE_SET:
        return f"prosody.feature_set {meta['feature_set']!r:.40}: only {FEATURE_SET!r} is known"
    return weight_problem("prosody", meta["weight"]) or tensors_problem(ProsodyHead, tensors, n_classes,
                                                                         N_FUNCTIONALS, "functionals")


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
