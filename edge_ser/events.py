"""Event payloads (schema version 1): what the agent publishes for each stream, as JSON-able dicts.

:class:`EventBuilder` turns smoother outputs (:class:`~edge_ser.smoothing.StateUpdate`,
:class:`~edge_ser.smoothing.Shift`), VAD boundaries (:class:`~edge_ser.types.SpeechBoundary`) and stream
status changes into payloads; :func:`validate_payload` checks one against the schema. Pure: wall-clock time
is an argument, never read here.

Every payload carries these fields:

=================  ========  ==================================================================================
field              type      meaning
=================  ========  ==================================================================================
``schema_version`` int       ``1``; bumped on any incompatible change.
``type``           str       ``"state"`` | ``"shift"`` | ``"segment_start"`` | ``"segment_end"`` |
                             ``"utterance"`` | ``"stream_status"``.
``id``             str       ``"{run_id}-{stream_id}-{seq}"``: unique per event, stable across re-sends
                             (de-duplicate on it); opaque, do not parse it.
``seq``            int       Per stream and run, starts at 1 and grows by 1 with every event of any type;
                             order events by it, a hole means a lost event.
``stream_id``      str       The audio stream (microphone, call, file) the event is about.
``device_id``      str       The agent that produced it.
``model``          str       The emotion model's id (name or hash) that produced the scores.
``t``              float     Stream-relative seconds (since the stream started), rounded to ms.
``ts``             str       UTC wall-clock time when the agent built the event, ISO 8601 with ms and ``Z``:
                             ``"2025-01-31T12:00:00.123Z"``.
=================  ========  ==================================================================================

Type-specific fields:

- ``state`` (one per ``state_interval_s`` of stream time while the stream runs):
  ``probs`` {label: probability, rounded to 4 decimals} over the model's labels; ``dominant`` one of those
  labels or ``"uncertain"`` (no class clearly ahead); ``window_end`` the end (stream seconds) of the latest
  window scored, null before the first (latency = arrival - stream start - window_end on a real-time source);
  ``confidence`` the dominant label's probability (for
  ``"uncertain"`` the top probability), 4 decimals.
- ``shift`` (the dominant emotion changed): ``from`` and ``to`` labels (``"uncertain"`` only when the
  agent is configured to report it); ``confidence`` the probability of ``to``; ``onset`` stream seconds where
  the change is placed (``t`` is when it was decided, so ``t - onset`` is the decision lag), or null.
- ``segment_start`` / ``segment_end`` (voice activity detection): ``segment_id`` int, the speech segment's
  number within the stream.
- ``utterance`` (a speech segment's final emotion, once the segment is over and its windows are scored; see
  ``edge_ser.utterances``): ``segment_id``; ``start`` / ``end`` stream seconds its scored windows cover
  (``t`` = ``end``); ``probs`` {label: probability} pooled over its windows; ``label`` their argmax;
  ``confidence`` its probability; ``windows`` how many windows were pooled.
- ``stream_status``: ``status`` one of ``"online"`` (the stream started), ``"degraded"`` (falling behind or
  dropping audio), ``"ended"`` (it stopped normally), ``"error"`` (it stopped on a failure); ``detail`` a
  human-readable string or null.

No other fields appear in a version-1 payload.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from edge_ser.smoothing import UNCERTAIN, Shift, StateUpdate
from edge_ser.types import EMOTIONS, SpeechBoundary
from edge_ser.utterances import Utterance

SCHEMA_VERSION = 1
EVENT_TYPES: tuple[str, ...] = ("state", "shift", "segment_start", "segment_end", "utterance", "stream_status")
STREAM_STATUSES: tuple[str, ...] = ("online", "degraded", "ended", "error")

_COMMON_FIELDS = ("schema_version", "type", "id", "seq", "stream_id", "device_id", "model", "t", "ts")
_TYPE_FIELDS: dict[str, tuple[str, ...]] = {
    "state": ("probs", "dominant", "confidence", "window_end"),
    "shift": ("from", "to", "confidence", "onset"),
    "segment_start": ("segment_id",),
    "segment_end": ("segment_id",),
    "utterance": ("segment_id", "start", "end", "probs", "label", "confidence", "windows"),
    "stream_status": ("status", "detail"),
}
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_PROB_SUM_TOL = 2e-3


def format_ts(wall_time: float) -> str:
    """UTC ISO 8601 with milliseconds and ``Z`` for a POSIX timestamp (seconds)."""
    if not math.isfinite(wall_time):
        raise ValueError(f"wall_time: expected finite POSIX seconds, got {wall_time!r}")
    ms = round(wall_time * 1000)
    base = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{base:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _check_id_part(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"EventBuilder {name}: expected a non-empty string, got {value!r}")
    return value


class EventBuilder:
    """Builds the payloads of one stream; owns its sequence number (see the module docstring)."""

    def __init__(
        self,
        device_id: str,
        stream_id: str,
        model_id: str,
        run_id: str,
        labels: Sequence[str] = EMOTIONS,
    ) -> None:
        self.device_id = _check_id_part("device_id", device_id)
        self.stream_id = _check_id_part("stream_id", stream_id)
        self.model_id = _check_id_part("model_id", model_id)
        self.run_id = _check_id_part("run_id", run_id)
        self.labels = tuple(labels)
        self._seq = 0

    @property
    def seq(self) -> int:
        """The sequence number of the last event built (0 before the first)."""
        return self._seq

    def _header(self, kind: str, t: float, wall_time: float) -> dict[str, Any]:
        if not math.isfinite(t):
            raise ValueError(f"event {kind}: stream time t must be finite, got {t!r}")
        ts = format_ts(wall_time)
        self._seq += 1
        return {
            "schema_version": SCHEMA_VERSION,
            "type": kind,
            "id": f"{self.run_id}-{self.stream_id}-{self._seq}",
            "seq": self._seq,
            "stream_id": self.stream_id,
            "device_id": self.device_id,
            "model": self.model_id,
            "t": round(float(t), 3),
            "ts": ts,
        }

    def state(self, update: StateUpdate, wall_time: float, window_end: float | None = None) -> dict[str, Any]:
        """A ``state`` payload; ``window_end`` is the end (stream seconds) of the latest window scored."""
        probs = self._probs(update.probs, "state")
        d = self._header("state", update.t, wall_time)
        d["probs"] = probs
        d["dominant"] = update.dominant
        d["confidence"] = round(float(update.confidence), 4)
        d["window_end"] = None if window_end is None else round(float(window_end), 3)
        return d

    def _probs(self, values: np.ndarray, kind: str) -> dict[str, float]:
        probs = np.asarray(values, dtype=np.float64)
        if probs.shape != (len(self.labels),):
            raise ValueError(
                f"event {kind}: expected {len(self.labels)} probabilities for labels {list(self.labels)}, "
                f"got shape {probs.shape}"
            )
        return {label: round(float(p), 4) for label, p in zip(self.labels, probs, strict=True)}

    def shift(self, shift: Shift, wall_time: float) -> dict[str, Any]:
        """A ``shift`` payload."""
        d = self._header("shift", shift.t, wall_time)
        d["from"] = shift.from_label
        d["to"] = shift.to_label
        d["confidence"] = round(float(shift.confidence), 4)
        d["onset"] = None if shift.onset is None else round(float(shift.onset), 3)
        return d

    def segment(self, boundary: SpeechBoundary, wall_time: float) -> dict[str, Any]:
        """A ``segment_start`` or ``segment_end`` payload."""
        if boundary.stream_id != self.stream_id:
            raise ValueError(
                f"event segment: boundary of stream {boundary.stream_id!r} given to the builder of "
                f"stream {self.stream_id!r}"
            )
        if boundary.kind not in ("start", "end"):
            raise ValueError(f"event segment: expected boundary kind 'start' or 'end', got {boundary.kind!r}")
        d = self._header(f"segment_{boundary.kind}", boundary.t, wall_time)
        d["segment_id"] = int(boundary.segment_id)
        return d

    def utterance(self, utterance: Utterance, wall_time: float) -> dict[str, Any]:
        """An ``utterance`` payload: a speech segment's pooled emotion."""
        d = self._header("utterance", utterance.end, wall_time)
        d["segment_id"] = int(utterance.segment_id)
        d["start"] = round(float(utterance.start), 3)
        d["end"] = round(float(utterance.end), 3)
        d["probs"] = self._probs(utterance.probs, "utterance")
        d["label"] = utterance.label
        d["confidence"] = round(float(utterance.confidence), 4)
        d["windows"] = int(utterance.windows)
        return d

    def stream_status(self, status: str, t: float, wall_time: float, detail: str | None = None) -> dict[str, Any]:
        """A ``stream_status`` payload; ``status`` is one of :data:`STREAM_STATUSES`."""
        if status not in STREAM_STATUSES:
            raise ValueError(f"event stream_status: expected status in {STREAM_STATUSES}, got {status!r}")
        d = self._header("stream_status", t, wall_time)
        d["status"] = status
        d["detail"] = detail
        return d

    def build(self, item: StateUpdate | Shift | SpeechBoundary | Utterance, wall_time: float) -> dict[str, Any]:
        """The payload for any smoother output, VAD boundary or utterance."""
        if isinstance(item, StateUpdate):
            return self.state(item, wall_time)
        if isinstance(item, Utterance):
            return self.utterance(item, wall_time)
        if isinstance(item, Shift):
            return self.shift(item, wall_time)
        if isinstance(item, SpeechBoundary):
            return self.segment(item, wall_time)
        raise TypeError(f"EventBuilder.build: cannot build an event from {type(item).__name__}")


# --- validation -------------------------------------------------------------------------------------------


def _fail(field: str, expected: str, value: Any) -> None:
    raise ValueError(f"payload field {field!r}: expected {expected}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_str(d: Mapping[str, Any], field: str) -> str:
    v = d[field]
    if not isinstance(v, str) or not v:
        _fail(field, "a non-empty string", v)
    return v


def _check_unit(d: Mapping[str, Any], field: str) -> None:
    v = d[field]
    if not _is_number(v) or not 0.0 <= v <= 1.0:
        _fail(field, "a number in [0, 1]", v)


def validate_payload(d: Mapping[str, Any]) -> None:
    """Check that ``d`` is a valid version-1 payload; raise ValueError naming the first bad field."""
    if not isinstance(d, Mapping):
        raise ValueError(f"payload: expected a JSON object (mapping), got {type(d).__name__}")
    missing = [f for f in _COMMON_FIELDS if f not in d]
    if missing:
        raise ValueError(f"payload: missing field(s) {missing}")
    if d["schema_version"] != SCHEMA_VERSION or not _is_int(d["schema_version"]):
        _fail("schema_version", str(SCHEMA_VERSION), d["schema_version"])
    kind = d["type"]
    if not isinstance(kind, str) or kind not in _TYPE_FIELDS:
        _fail("type", f"one of {EVENT_TYPES}", kind)
    missing = [f for f in _TYPE_FIELDS[kind] if f not in d]
    if missing:
        raise ValueError(f"payload of type {kind!r}: missing field(s) {missing}")
    unknown = sorted(set(d) - set(_COMMON_FIELDS) - set(_TYPE_FIELDS[kind]))
    if unknown:
        raise ValueError(f"payload of type {kind!r}: unknown field(s) {unknown}")

    seq = d["seq"]
    if not _is_int(seq) or seq < 1:
        _fail("seq", "an integer >= 1", seq)
    stream_id = _check_str(d, "stream_id")
    _check_str(d, "device_id")
    _check_str(d, "model")
    event_id = _check_str(d, "id")
    if not event_id.endswith(f"-{stream_id}-{seq}") or len(event_id) <= len(f"-{stream_id}-{seq}"):
        _fail("id", f"'<run_id>-{stream_id}-{seq}'", event_id)
    if not _is_number(d["t"]) or d["t"] < 0:
        _fail("t", "a finite number of stream seconds >= 0", d["t"])
    if not isinstance(d["ts"], str) or not _TS_RE.match(d["ts"]):
        _fail("ts", "UTC ISO 8601 with milliseconds and Z, like '2025-01-31T12:00:00.123Z'", d["ts"])
    _VALIDATORS[kind](d)


def _validate_probs(d: Mapping[str, Any]) -> Mapping[str, Any]:
    probs = d["probs"]
    if not isinstance(probs, Mapping) or len(probs) < 2:
        _fail("probs", "an object {label: probability} with at least 2 labels", probs)
    for label, p in probs.items():
        if not isinstance(label, str) or not label or label == UNCERTAIN:
            _fail("probs", f"label keys (non-empty strings other than {UNCERTAIN!r})", label)
        if not _is_number(p) or not 0.0 <= p <= 1.0:
            _fail(f"probs.{label}", "a number in [0, 1]", p)
    total = sum(probs.values())
    if abs(total - 1.0) > _PROB_SUM_TOL:
        _fail("probs", f"probabilities summing to 1 (+-{_PROB_SUM_TOL})", total)
    return probs


def _validate_state(d: Mapping[str, Any]) -> None:
    probs = _validate_probs(d)
    dominant = _check_str(d, "dominant")
    if dominant != UNCERTAIN and dominant not in probs:
        _fail("dominant", f"one of {sorted(probs)} or {UNCERTAIN!r}", dominant)
    _check_unit(d, "confidence")
    if d["window_end"] is not None and (not _is_number(d["window_end"]) or d["window_end"] < 0):
        _fail("window_end", "null or a number of stream seconds >= 0", d["window_end"])


def _validate_shift(d: Mapping[str, Any]) -> None:
    src = _check_str(d, "from")
    dst = _check_str(d, "to")
    if src == dst:
        _fail("to", f"a label different from 'from' ({src!r})", dst)
    _check_unit(d, "confidence")
    onset = d["onset"]
    if onset is not None and (not _is_number(onset) or onset < 0):
        _fail("onset", "null or a finite number of stream seconds >= 0", onset)


def _validate_segment(d: Mapping[str, Any]) -> None:
    if not _is_int(d["segment_id"]) or d["segment_id"] < 0:
        _fail("segment_id", "an integer >= 0", d["segment_id"])


def _validate_utterance(d: Mapping[str, Any]) -> None:
    _validate_segment(d)
    probs = _validate_probs(d)
    for name in ("start", "end"):
        if not _is_number(d[name]) or d[name] < 0:
            _fail(name, "a finite number of stream seconds >= 0", d[name])
    if d["end"] < d["start"]:
        _fail("end", f"a time >= start ({d['start']!r})", d["end"])
    if _check_str(d, "label") not in probs:
        _fail("label", f"one of {sorted(probs)}", d["label"])
    _check_unit(d, "confidence")
    if not _is_int(d["windows"]) or d["windows"] < 1:
        _fail("windows", "an integer >= 1", d["windows"])


def _validate_status(d: Mapping[str, Any]) -> None:
    if d["status"] not in STREAM_STATUSES:
        _fail("status", f"one of {STREAM_STATUSES}", d["status"])
    if d["detail"] is not None and not isinstance(d["detail"], str):
        _fail("detail", "a string or null", d["detail"])


_VALIDATORS = {
    "state": _validate_state,
    "shift": _validate_shift,
    "segment_start": _validate_segment,
    "segment_end": _validate_segment,
    "utterance": _validate_utterance,
    "stream_status": _validate_status,
}
