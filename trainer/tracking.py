"""Scoring of temporal emotion tracking on shift streams (EVAL.md, "Temporal tracking"). Pure.

Inputs: a stream's ground truth (:class:`StreamTruth`, from the JSON that :mod:`trainer.streams` writes),
the shifts the agent reported and the per-second states it reported.

Metrics (:class:`TrackingResult`):

- **per-second UA**: second ``k`` (``[k, k+1)``) is labelled by the truth interval covering its midpoint
  ``k + 0.5``; seconds in the noise between clips, or with a label outside the scored set, are skipped. Its
  prediction is the label of the latest state reported at or before ``k + 1`` (what the agent had said by
  the end of that second); no state yet, ``"uncertain"`` or a label outside the scored set count as wrong.
  UA is the mean per-class recall over the classes present; WA (plain accuracy) is given too.
- **change-point precision / recall / F1**: a reported shift is correct when it is placed within
  ``tolerance_s`` (1.0 s) of a true boundary; each true boundary and each reported shift is matched at most
  once, greedily by distance (closest pairs first). A shift is placed at its ``onset`` when it has one,
  else at its report time ``t``.
- **detection delay**: for matched shifts, report time ``t`` minus the true boundary; the median is
  quoted. With onsets, also the median placement error (onset minus the boundary).
- **per-second UA of the utterances** (``ua_final``): the same seconds, each answered by the final label of
  the utterance (a pooled speech segment, ``edge_ser.utterances``) that covers its midpoint, or, when the
  midpoint falls in a pause, the nearest one; no utterance at all counts as wrong. This scores the agent's
  final per-utterance answer, published when each utterance ends; ``ua`` scores the live states.
- **spurious shifts per minute of steady emotion**: unmatched reported shifts placed in steady emotion (clip
  time farther than ``tolerance_s`` from every boundary) divided by the minutes of steady emotion. Unmatched
  shifts near a boundary (a second shift for one change) count against precision, not here;
  ``unmatched_per_min`` divides all unmatched shifts by the same minutes (the definition used up to stop 9).

:func:`aggregate` pools streams: counts are summed and delays pooled before any ratio or median.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FOUR_CLASSES: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
NO_PREDICTION = "<none>"


@dataclass(frozen=True, slots=True)
class TruthInterval:
    """A clip in a shift stream: ``label`` from ``start`` to ``end`` (stream seconds)."""

    start: float
    end: float
    label: str


@dataclass(frozen=True, slots=True)
class StreamTruth:
    """Ground truth of one shift stream: clip intervals in time order and the true change times."""

    intervals: tuple[TruthInterval, ...]
    boundaries: tuple[float, ...]
    duration_s: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "truth") -> StreamTruth:
        """From the ground-truth JSON of :mod:`trainer.streams` (``intervals``, ``boundaries``)."""
        try:
            intervals = tuple(
                TruthInterval(float(x["start"]), float(x["end"]), str(x["label"])) for x in d["intervals"]
            )
            boundaries = tuple(float(b) for b in d["boundaries"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{source}: expected 'intervals' [{{start, end, label}}] and 'boundaries' [seconds]: {exc!r}"
            ) from exc
        for a, b in itertools.pairwise(intervals):
            if b.start < a.end - 1e-9:
                raise ValueError(f"{source}: intervals overlap or are out of order: {a} then {b}")
        end = intervals[-1].end if intervals else 0.0
        duration = float(d.get("duration_s", end))
        return cls(intervals, boundaries, max(duration, end))

    def label_at(self, t: float) -> str | None:
        """The truth label at ``t``, or None in the noise between clips."""
        for iv in self.intervals:
            if iv.start <= t < iv.end:
                return iv.label
        return None


def load_truth(path: str | Path) -> StreamTruth:
    """Read a ground-truth JSON written by :mod:`trainer.streams`."""
    with open(path, encoding="utf-8") as f:
        return StreamTruth.from_dict(json.load(f), source=str(path))


@dataclass(frozen=True, slots=True)
class ReportedShift:
    """A shift as reported: decided at ``t``, placed at ``onset`` (None: placed at ``t``)."""

    t: float
    onset: float | None = None

    @property
    def placed_at(self) -> float:
        return self.t if self.onset is None else self.onset


@dataclass(slots=True)
class TrackingResult:
    """Counts behind the tracking metrics; ratios and medians are properties (None when undefined)."""

    labels: tuple[str, ...] = FOUR_CLASSES
    n_streams: int = 0
    class_total: dict[str, int] = field(default_factory=dict)
    class_correct: dict[str, int] = field(default_factory=dict)
    n_true: int = 0
    n_reported: int = 0
    n_matched: int = 0
    delays: list[float] = field(default_factory=list)
    onset_errors: list[float] = field(default_factory=list)
    n_spurious: int = 0
    n_unmatched: int = 0
    steady_s: float = 0.0
    final_total: dict[str, int] = field(default_factory=dict)
    final_correct: dict[str, int] = field(default_factory=dict)

    @property
    def n_seconds(self) -> int:
        return sum(self.class_total.values())

    @property
    def ua(self) -> float | None:
        return _ua(self.class_total, self.class_correct)

    @property
    def ua_final(self) -> float | None:
        return _ua(self.final_total, self.final_correct)

    @property
    def wa(self) -> float | None:
        n = self.n_seconds
        return sum(self.class_correct.values()) / n if n else None

    @property
    def precision(self) -> float | None:
        return self.n_matched / self.n_reported if self.n_reported else None

    @property
    def recall(self) -> float | None:
        return self.n_matched / self.n_true if self.n_true else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def median_delay_s(self) -> float | None:
        return float(np.median(self.delays)) if self.delays else None

    @property
    def median_onset_error_s(self) -> float | None:
        return float(np.median(self.onset_errors)) if self.onset_errors else None

    @property
    def spurious_per_min(self) -> float | None:
        return self.n_spurious / (self.steady_s / 60.0) if self.steady_s > 0 else None

    @property
    def unmatched_per_min(self) -> float | None:
        return self.n_unmatched / (self.steady_s / 60.0) if self.steady_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: metrics first, then the counts they come from."""
        return {
            "ua": self.ua,
            "ua_final": self.ua_final,
            "wa": self.wa,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "median_delay_s": self.median_delay_s,
            "median_onset_error_s": self.median_onset_error_s,
            "spurious_per_min": self.spurious_per_min,
            "unmatched_per_min": self.unmatched_per_min,
            "labels": list(self.labels),
            "n_streams": self.n_streams,
            "n_seconds": self.n_seconds,
            "class_total": dict(self.class_total),
            "class_correct": dict(self.class_correct),
            "n_true": self.n_true,
            "n_reported": self.n_reported,
            "n_matched": self.n_matched,
            "n_spurious": self.n_spurious,
            "n_unmatched": self.n_unmatched,
            "steady_min": self.steady_s / 60.0,
            "final_total": dict(self.final_total),
            "final_correct": dict(self.final_correct),
        }


def _ua(total: Mapping[str, int], correct: Mapping[str, int]) -> float | None:
    recalls = [correct.get(c, 0) / n for c, n in total.items() if n > 0]
    return float(np.mean(recalls)) if recalls else None


def _as_shift(x: ReportedShift | float) -> ReportedShift:
    if isinstance(x, ReportedShift):
        return x
    return ReportedShift(t=float(x))


def match_shifts(
    placed: Sequence[float], boundaries: Sequence[float], tolerance_s: float = 1.0
) -> list[tuple[int, int]]:
    """Pairs (reported index, boundary index) within ``tolerance_s``, each used once, closest first."""
    pairs = sorted(
        (abs(r - b), i, j)
        for i, r in enumerate(placed)
        for j, b in enumerate(boundaries)
        if abs(r - b) <= tolerance_s + 1e-9
    )
    used_r: set[int] = set()
    used_b: set[int] = set()
    out = []
    for _, i, j in pairs:
        if i not in used_r and j not in used_b:
            used_r.add(i)
            used_b.add(j)
            out.append((i, j))
    return out


def steady_seconds(truth: StreamTruth, margin_s: float) -> float:
    """Clip time farther than ``margin_s`` from every true boundary."""
    total = 0.0
    cuts = sorted((b - margin_s, b + margin_s) for b in truth.boundaries)
    for iv in truth.intervals:
        pieces = [(iv.start, iv.end)]
        for lo, hi in cuts:
            nxt = []
            for a, b in pieces:
                if hi <= a or lo >= b:
                    nxt.append((a, b))
                    continue
                if lo > a:
                    nxt.append((a, lo))
                if hi < b:
                    nxt.append((hi, b))
            pieces = nxt
        total += sum(b - a for a, b in pieces)
    return total


def in_steady(truth: StreamTruth, t: float, margin_s: float) -> bool:
    """Whether ``t`` lies in clip time farther than ``margin_s`` from every true boundary."""
    return truth.label_at(t) is not None and all(abs(t - b) > margin_s for b in truth.boundaries)


def utterance_label_at(utterances: Sequence[tuple[float, float, str]], t: float) -> str:
    """The label of the utterance covering ``t``, else of the nearest one (:data:`NO_PREDICTION` if none)."""
    best, label = math.inf, NO_PREDICTION
    for start, end, lab in utterances:
        distance = 0.0 if start <= t < end else min(abs(t - start), abs(t - end))
        if distance < best:
            best, label = distance, lab
    return label


def score_stream(
    truth: StreamTruth,
    shifts: Iterable[ReportedShift | float],
    states: Iterable[tuple[float, str]],
    labels: Sequence[str] = FOUR_CLASSES,
    tolerance_s: float = 1.0,
    utterances: Sequence[tuple[float, float, str]] | None = None,
) -> TrackingResult:
    """Score one stream (see the module docstring). ``states`` are (t, label) in any order; ``utterances``
    (start, end, final label) are optional."""
    labels = tuple(labels)
    result = TrackingResult(labels=labels, n_streams=1)

    # Per-second labels.
    ordered = sorted((float(t), str(lab)) for t, lab in states)
    times = [t for t, _ in ordered]
    for k in range(math.floor(truth.duration_s - 0.5 + 1e-9) + 1):
        true = truth.label_at(k + 0.5)
        if true is None or true not in labels:
            continue
        i = int(np.searchsorted(times, k + 1 + 1e-9, side="right")) - 1
        pred = ordered[i][1] if i >= 0 else NO_PREDICTION
        result.class_total[true] = result.class_total.get(true, 0) + 1
        result.class_correct[true] = result.class_correct.get(true, 0) + int(pred == true)
        if utterances is not None:
            final = utterance_label_at(utterances, k + 0.5)
            result.final_total[true] = result.final_total.get(true, 0) + 1
            result.final_correct[true] = result.final_correct.get(true, 0) + int(final == true)

    # Change points.
    reported = [_as_shift(x) for x in shifts]
    matches = match_shifts([r.placed_at for r in reported], truth.boundaries, tolerance_s)
    result.n_true = len(truth.boundaries)
    result.n_reported = len(reported)
    result.n_matched = len(matches)
    for i, j in sorted(matches):
        result.delays.append(reported[i].t - truth.boundaries[j])
        if reported[i].onset is not None:
            result.onset_errors.append(reported[i].onset - truth.boundaries[j])
    matched = {i for i, _ in matches}
    unmatched = [r for i, r in enumerate(reported) if i not in matched]
    result.n_unmatched = len(unmatched)
    result.n_spurious = sum(in_steady(truth, r.placed_at, tolerance_s) for r in unmatched)
    result.steady_s = steady_seconds(truth, tolerance_s)
    return result


def aggregate(results: Iterable[TrackingResult]) -> TrackingResult:
    """Pool streams: sum the counts, pool the delays."""
    results = list(results)
    if not results:
        return TrackingResult()
    out = TrackingResult(labels=results[0].labels)
    for r in results:
        if r.labels != out.labels:
            raise ValueError(f"aggregate: results scored on different labels: {out.labels} and {r.labels}")
        out.n_streams += r.n_streams
        for c, n in r.class_total.items():
            out.class_total[c] = out.class_total.get(c, 0) + n
        for c, n in r.class_correct.items():
            out.class_correct[c] = out.class_correct.get(c, 0) + n
        out.n_true += r.n_true
        out.n_reported += r.n_reported
        out.n_matched += r.n_matched
        out.delays.extend(r.delays)
        out.onset_errors.extend(r.onset_errors)
        out.n_spurious += r.n_spurious
        out.n_unmatched += r.n_unmatched
        out.steady_s += r.steady_s
        for c, n in r.final_total.items():
            out.final_total[c] = out.final_total.get(c, 0) + n
        for c, n in r.final_correct.items():
            out.final_correct[c] = out.final_correct.get(c, 0) + n
    return out


def from_payloads(
    payloads: Iterable[Mapping[str, Any]],
    labels: Sequence[str] = FOUR_CLASSES,
    restrict_states: bool = False,
) -> tuple[list[ReportedShift], list[tuple[float, str]]]:
    """Shifts and per-second states of one stream from its event payloads (``edge_ser.events`` schema).

    Shifts to or from ``"uncertain"`` are left out. With ``restrict_states`` a state's label is the argmax
    of its probabilities over ``labels`` (the 4-class protocol) unless it is ``"uncertain"``; otherwise it
    is the reported dominant label.
    """
    shifts: list[ReportedShift] = []
    states: list[tuple[float, str]] = []
    for d in payloads:
        kind = d.get("type")
        if kind == "shift":
            if "uncertain" in (d["from"], d["to"]):
                continue
            onset = d.get("onset")
            shifts.append(ReportedShift(t=float(d["t"]), onset=None if onset is None else float(onset)))
        elif kind == "state":
            label = str(d["dominant"])
            if restrict_states and label != "uncertain":
                probs = d["probs"]
                label = max(labels, key=lambda c: probs.get(c, 0.0))
            states.append((float(d["t"]), label))
    return shifts, states
