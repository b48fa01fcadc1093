"""A second reader fused with the encoder's head: standardised features scored by logistic regression.

A model may carry classifiers that read something the frame head does not: the window's prosody
(``edge_ser.prosody``: openSMILE functionals of the samples) or the statistics of the encoder features over
the window (``edge_ser.window_stats``: their mean and standard deviation). Each is a ``LinearProbe``: K
members' standardise-then-multinomial-logistic-regression classifiers whose class log-probabilities are
averaged over the members and, times a fusion weight, added to the window's clip logits and to each of its
per-second logits. For a model merged from several members (``trainer.ensemble``) each member keeps its own
classifier, as each keeps its own head.

Tensors (K members, C classes, F features), named ``<prefix>.mean`` (K, F) and ``<prefix>.scale`` (K, F),
which standardise, and ``<prefix>.weight`` (K, C, F) and ``<prefix>.bias`` (K, C), which classify.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

PARTS = ("mean", "scale", "weight", "bias")

P = TypeVar("P", bound="LinearProbe")


class ProbeError(ValueError):
    """A fused classifier's metadata or tensors are inconsistent; the message names the problem."""


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class LinearProbe:
    """K standardise-then-logistic-regression classifiers and their fusion weight; subclasses name their
    tensors (``prefix``) and what ``model.json`` records beside the weight (``meta``)."""

    mean: np.ndarray  # (K, F)
    scale: np.ndarray  # (K, F)
    weight: np.ndarray  # (K, C, F)
    bias: np.ndarray  # (K, C)
    fusion_weight: float
    fit: dict[str, Any] | None = None
    """How it was fitted, for the record; None when not known."""

    prefix: ClassVar[str] = "probe"

    @classmethod
    def tensor_names(cls) -> tuple[str, ...]:
        return tuple(f"{cls.prefix}.{part}" for part in PARTS)

    def log_probs(self, features: np.ndarray) -> np.ndarray:
        """(N, C) class log-probabilities of (N, F) features, averaged over the members. A feature that is NaN
        (not measurable) reads as the training mean."""
        z = np.nan_to_num((features[:, None, :] - self.mean) / self.scale, nan=0.0)  # (N, K, F)
        logits = np.einsum("nkf,kcf->nkc", z, self.weight) + self.bias
        return log_softmax(logits).mean(axis=1).astype(np.float32)

    def logit_bias(self, features: np.ndarray) -> np.ndarray:
        """(N, C) what is added to each window's clip logits: ``fusion_weight`` x the log-probabilities."""
        return (self.fusion_weight * self.log_probs(features)).astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        return dict(zip(self.tensor_names(), (self.mean, self.scale, self.weight, self.bias), strict=True))

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"weight": self.fusion_weight}
        return meta if self.fit is None else {**meta, "fit": dict(self.fit)}

    @classmethod
    def from_tensors(cls: type[P], meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> P:
        return cls(*(np.asarray(tensors[name], dtype=np.float32) for name in cls.tensor_names()),
                   fusion_weight=float(meta["weight"]), fit=meta.get("fit"))

    @classmethod
    def merge(cls: type[P], heads: Sequence[P]) -> P:
        """One classifier whose log-probabilities are the mean of ``heads``' (all with the same fusion weight
        and fitting recipe)."""
        weights = {head.fusion_weight for head in heads}
        if len(weights) != 1:
            raise ProbeError(f"cannot merge {cls.prefix} classifiers with different fusion weights {sorted(weights)}")
        fits = [head.fit for head in heads]
        if any(fit != fits[0] for fit in fits):
            raise ProbeError(f"cannot merge {cls.prefix} classifiers fitted differently: {fits}")
        return cls(*(np.concatenate([getattr(h, name) for h in heads]) for name in PARTS),
                   fusion_weight=weights.pop(), fit=fits[0])


def without_probes(tensors: dict[str, np.ndarray], *probes: type[LinearProbe]) -> dict[str, np.ndarray]:
    """A checkpoint's tensors less those of the ``probes`` classes (what the encoder model is built from)."""
    names = {name for probe in probes for name in probe.tensor_names()}
    return {name: value for name, value in tensors.items() if name not in names}


def weight_problem(prefix: str, weight: Any) -> str | None:
    """Why a fusion weight from ``model.json`` cannot be used, or None."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 10:
        return f"{prefix}.weight must be a number in 0..10, got {weight!r:.40}"
    return None


def tensors_problem(probe: type[LinearProbe], tensors: dict[str, np.ndarray], n_classes: int, n_features: int,
                    what: str) -> str | None:
    """Why ``probe``'s tensors are missing or misshapen for ``n_classes`` labels and ``n_features`` features
    (``what`` names them in the message), or None."""
    names = probe.tensor_names()
    missing = [name for name in names if name not in tensors]
    if missing:
        return f"missing tensors {missing}"
    mean = tensors[names[0]]
    members = mean.shape[0] if mean.ndim == 2 else -1
    shapes = dict(zip(names, ((members, n_features), (members, n_features), (members, n_classes, n_features),
                              (members, n_classes)), strict=True))
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape or members < 1:
            return (f"tensor {name!r} has shape {tuple(tensors[name].shape)}; expected {shape} ({n_classes} labels, "
                    f"{n_features} {what})")
    if np.any(tensors[names[1]] <= 0):
        return f"tensor {names[1]!r} must be positive"
    return None
