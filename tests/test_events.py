"""Event payloads: schema, ids and sequence numbers, timestamps, and validation errors."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest

from edge_ser.events import SCHEMA_VERSION, EventBuilder, format_ts, validate_payload
from edge_ser.smoothing import UNCERTAIN, Shift, StateUpdate
from edge_ser.types import EMOTIONS, SpeechBoundary
from edge_ser.utterances import Utterance

WALL = 1_700_000_000.1234  # 2023-11-14T22:13:20.123Z


def builder() -> EventBuilder:
    return EventBuilder(device_id="pi-kitchen", stream_id="mic0", model_id="ser-base-1a2b", run_id="r7")


def state(t: float = 3.0, dominant: str = "happy") -> StateUpdate:
    p = np.full(len(EMOTIONS), 0.3 / (len(EMOTIONS) - 1), dtype=np.float32)
    p[EMOTIONS.index("happy")] = 0.7
    return StateUpdate(t=t, probs=p, dominant=dominant, confidence=0.7)


def test_state_payload_fields_and_rounding() -> None:
    d = builder().state(state(t=3.00049), WALL)
    validate_payload(d)
    assert d["schema_version"] == SCHEMA_VERSION == 1
    assert d["type"] == "state"
    assert (d["id"], d["seq"]) == ("r7-mic0-1", 1)
    assert (d["stream_id"], d["device_id"], d["model"]) == ("mic0", "pi-kitchen", "ser-base-1a2b")
    assert d["t"] == 3.0
    assert d["ts"] == "2023-11-14T22:13:20.123Z"
    assert list(d["probs"]) == list(EMOTIONS)
    assert d["probs"]["happy"] == 0.7
    assert d["probs"]["sad"] == round(0.3 / 7, 4)
    assert (d["dominant"], d["confidence"]) == ("happy", 0.7)
    assert json.loads(json.dumps(d)) == d  # plain JSON types only


def test_ids_and_seq_grow_across_event_types() -> None:
    b = builder()
    events = [
        b.stream_status("online", 0.0, WALL),
        b.segment(SpeechBoundary("mic0", "start", 0.42, 0), WALL),
        b.state(state(t=2.0), WALL),
        b.shift(Shift(t=5.5, from_label="happy", to_label="sad", confidence=0.61234, onset=4.25), WALL),
        b.segment(SpeechBoundary("mic0", "end", 7.1, 0), WALL),
        b.stream_status("ended", 7.5, WALL + 1, detail="end of file"),
    ]
    for d in events:
        validate_payload(d)
    assert [d["seq"] for d in events] == [1, 2, 3, 4, 5, 6]
    assert len({d["id"] for d in events}) == 6
    assert [d["type"] for d in events] == [
        "stream_status", "segment_start", "state", "shift", "segment_end", "stream_status",
    ]
    assert events[1]["segment_id"] == 0
    shift = events[3]
    assert (shift["from"], shift["to"], shift["confidence"], shift["onset"]) == ("happy", "sad", 0.6123, 4.25)
    assert events[5]["detail"] == "end of file"
    assert b.seq == 6
    # Another run of the same stream gets other ids.
    other = EventBuilder("pi-kitchen", "mic0", "ser-base-1a2b", run_id="r8").state(state(), WALL)
    assert other["id"] == "r8-mic0-1"


def test_build_dispatches_and_uncertain_state_is_valid() -> None:
    b = builder()
    d = b.build(state(dominant=UNCERTAIN), WALL)
    validate_payload(d)
    assert d["dominant"] == UNCERTAIN
    assert b.build(Shift(2.0, "happy", UNCERTAIN, 0.4), WALL)["onset"] is None
    with pytest.raises(TypeError, match="cannot build"):
        b.build("hello", WALL)  # type: ignore[arg-type]


def test_format_ts_rounds_to_milliseconds() -> None:
    assert format_ts(0.0) == "1970-01-01T00:00:00.000Z"
    assert format_ts(0.9996) == "1970-01-01T00:00:01.000Z"
    assert format_ts(WALL) == "2023-11-14T22:13:20.123Z"
    with pytest.raises(ValueError, match="wall_time"):
        format_ts(float("nan"))


def test_builder_rejects_bad_input() -> None:
    b = builder()
    with pytest.raises(ValueError, match="stream 'mic1'"):
        b.segment(SpeechBoundary("mic1", "start", 1.0, 0), WALL)
    with pytest.raises(ValueError, match="probabilities"):
        b.state(StateUpdate(1.0, np.ones(4) / 4, "happy", 0.25), WALL)
    with pytest.raises(ValueError, match="status"):
        b.stream_status("sleeping", 1.0, WALL)
    with pytest.raises(ValueError, match="stream_id"):
        EventBuilder("dev", "", "model", "run")
    assert b.seq == 0  # nothing was issued by the failed calls


def _set(field: str, value: Any):
    def mutate(d: dict[str, Any]) -> None:
        d[field] = value

    return mutate


def _drop(field: str):
    def mutate(d: dict[str, Any]) -> None:
        del d[field]

    return mutate


def _set_prob(label: str, value: Any):
    def mutate(d: dict[str, Any]) -> None:
        d["probs"][label] = value

    return mutate


STATE_BREAKS = [
    (_drop("ts"), "ts"),
    (_drop("probs"), "probs"),
    (_set("extra", 1), "extra"),
    (_set("schema_version", 2), "schema_version"),
    (_set("schema_version", True), "schema_version"),
    (_set("type", "mood"), "type"),
    (_set("seq", True), "seq"),
    (_set("seq", 0), "seq"),
    (_set("id", "r7-mic0-2"), "id"),
    (_set("stream_id", ""), "stream_id"),
    (_set("model", None), "model"),
    (_set("t", -1.0), "t"),
    (_set("t", float("nan")), "t"),
    (_set("ts", "2023-11-14 22:13:20"), "ts"),
    (_set("dominant", "bored"), "dominant"),
    (_set("confidence", 1.5), "confidence"),
    (_set_prob("happy", 0.9), "probs"),
    (_set_prob("sad", "high"), "probs.sad"),
]


@pytest.mark.parametrize(("mutate", "field"), STATE_BREAKS, ids=[f for _, f in STATE_BREAKS])
def test_validate_payload_names_the_bad_field(mutate, field: str) -> None:
    d = copy.deepcopy(builder().state(state(), WALL))
    validate_payload(d)
    mutate(d)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_payload(d)


def test_validate_payload_type_specific_fields() -> None:
    b = builder()
    shift = b.shift(Shift(5.0, "happy", "sad", 0.6, onset=4.0), WALL)
    with pytest.raises(ValueError, match="'to'"):
        validate_payload({**shift, "to": "happy"})
    with pytest.raises(ValueError, match="onset"):
        validate_payload({**shift, "onset": "soon"})
    segment = b.segment(SpeechBoundary("mic0", "start", 1.0, 3), WALL)
    with pytest.raises(ValueError, match="segment_id"):
        validate_payload({**segment, "segment_id": -1})
    with pytest.raises(ValueError, match="probs"):
        validate_payload({**segment, "probs": {}})  # a field of another type
    status = b.stream_status("error", 2.0, WALL, detail="microphone unplugged")
    with pytest.raises(ValueError, match="status"):
        validate_payload({**status, "status": "sad"})
    with pytest.raises(ValueError, match="JSON object"):
        validate_payload(["not", "a", "dict"])  # type: ignore[arg-type]


def test_utterance_payload_fields_and_validation() -> None:
    p = np.full(len(EMOTIONS), 0.3 / (len(EMOTIONS) - 1), dtype=np.float32)
    p[EMOTIONS.index("sad")] = 0.7
    d = builder().build(Utterance(4, 2.5, 5.25, p, "sad", 0.7, 3), WALL)
    validate_payload(d)
    assert d["type"] == "utterance" and d["t"] == 5.25 and d["segment_id"] == 4
    assert (d["start"], d["end"], d["label"], d["confidence"], d["windows"]) == (2.5, 5.25, "sad", 0.7, 3)
    assert d["probs"]["sad"] == 0.7 and set(d["probs"]) == set(EMOTIONS)
    with pytest.raises(ValueError, match="'end'"):
        validate_payload({**d, "end": 1.0})
    with pytest.raises(ValueError, match="'label'"):
        validate_payload({**d, "label": "bored"})
    with pytest.raises(ValueError, match="'windows'"):
        validate_payload({**d, "windows": 0})
    with pytest.raises(ValueError, match="probabilities"):
        builder().utterance(Utterance(0, 0.0, 1.0, p[:4], "sad", 0.7, 1), WALL)
