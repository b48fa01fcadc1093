"""Temporal tracking on shift streams (EVAL.md, "Temporal tracking"): ``edge-ser-eval --streams``.

Each stream (``stream_NNN.wav`` + ``.json`` from :mod:`trainer.streams`) runs through the agent's own pure
stages, synchronously (no asyncio, no MQTT), in the order the agent's pipeline feeds them::

    blocks of block_s -> vad.Segmenter -> windows.Windower -> features.log_mel -> engine (clip probs)
    -> smoothing (segment at each speech start, push per window, gap while no speech, flush at the end)
    -> states and shifts; the same windows pooled per speech segment -> utterances (final labels)

and is scored with :mod:`trainer.tracking` (per-second 4-class UA, change-point P/R/F1 within
``tolerance_s``, median detection delay, spurious shifts per minute of steady emotion), the per-second UA
both of the live states (``ua``) and of the final per-utterance labels (``ua_final``). For comparison the
same engine scores each clip of the streams whole (the 4-class protocol of ``edge-ser-eval``): EVAL.md
wants the per-second UA within 5 points of that clip UA (``ua_gap``: live; ``ua_final_gap``: utterances).
Utterance labels are scored as the 4-class protocol scores clips: the argmax over the four classes.

The expensive part (VAD + windows + engine) is cached per (stream audio, window_s, hop_s, model, engine,
VAD) in ``.npz`` files, so smoothers can be swept without running the encoder again
(``benchmarks/smoother_sweep.py``). ``label_space="model"`` smooths over all the model's labels, as the
agent does; ``"4class"`` restricts every window to neutral/happy/sad/angry first (a softmax over those
four logits, like the clip protocol).

    edge-ser-eval --streams --model models/default --stream-dir runs/streams --out runs/streams.json
    edge-ser-eval --streams --model DIR --manifest M --n 10 --seed 0 --out runs/tracking.json --plot runs/png
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from edge_ser.audio import load_audio
from edge_ser.backends import Ct2EngineConfig, EngineConfig, FrameScores, TorchEngineConfig, make_engine
from edge_ser.centring import CentringConfig, StreamCentring, meta_reference
from edge_ser.checkpoint import ModelMeta, read_meta
from edge_ser.features import FeatureParams, log_mel
from edge_ser.pipeline import GAP_TICK_S
from edge_ser.smoothing import (
    UNCERTAIN,
    AnySmootherConfig,
    Shift,
    SmootherConfig,
    StateUpdate,
    make_smoother,
    parse_smoother_config,
)
from edge_ser.types import SAMPLE_RATE, AudioBlock, SpeechBoundary, Window
from edge_ser.utterances import Utterance, UtteranceTracker
from edge_ser.vad import Segmenter, VadConfig
from edge_ser.windows import WindowConfig, Windower
from trainer.cache import prepare_mel
from trainer.data import crop
from trainer.metrics import confusion_matrix, protocol_probs, truth_index, unweighted_accuracy
from trainer.streams import StreamBuildConfig, build_streams
from trainer.tracking import FOUR_CLASSES, ReportedShift, StreamTruth, TrackingResult, aggregate, score_stream

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MAX_CLIP_S = 30.0
ENGINE_BATCH = 16
TARGETS: dict[str, tuple[str, float]] = {
    "f1": (">=", 0.6),
    "median_delay_s": ("<=", 1.5),
    "spurious_per_min": ("<=", 1.0),
    "ua_final_gap": ("<=", 0.05),
}
"""EVAL.md / issue targets; ``ua_final_gap`` is |clip UA - per-second UA of the final utterance labels| (the
live states' ``ua_gap`` is reported beside it: a live state trails every change by the detection delay)."""

WINDOW, GAP, SEG_START, SEG_END = 0, 1, 2, 3
"""Kinds of the events :func:`run_stages` returns: a window (value: its index), a gap tick, a segment start or
end (value: the time)."""
SmootherSettings = AnySmootherConfig


class StreamEvalConfig(BaseModel):
    """The agent settings a tracking evaluation runs with (the same models the agent's YAML uses)."""

    model_config = ConfigDict(extra="forbid")
    engine: EngineConfig = Field(default_factory=Ct2EngineConfig, description="Inference backend.")
    vad: VadConfig = Field(default_factory=VadConfig, description="Voice activity detection.")
    windows: WindowConfig = Field(default_factory=WindowConfig, description="Sliding windows over speech.")
    smoothing: SmootherConfig = Field(
        default_factory=lambda: parse_smoother_config({"type": "segment"}),
        description="Smoother (the agent's default: segment).",
    )
    label_space: Literal["model", "4class"] = Field(
        "model", description="'model': smooth over all model labels (as the agent); '4class': restrict each "
        "window to neutral/happy/sad/angry first.")
    tolerance_s: float = Field(1.0, gt=0, description="A reported shift within this many seconds of a true "
                                                       "boundary is correct.")
    block_s: float = Field(0.1, gt=0, le=2.0, description="Audio block length fed to the VAD (the file source's).")
    centring: CentringConfig = Field(default_factory=CentringConfig, description="Stream adaptation, as the "
                                     "agent's (edge_ser.centring); each window centred on all earlier windows.")
    prosody: bool = Field(False, description="Add the model's prosody term (edge_ser.prosody) to each window, as "
                          "the agent's model.prosody does (off by default, as there).")
    stats: bool = Field(False, description="Add the model's window-statistics term (edge_ser.window_stats) to each "
                        "window, as the agent's model.stats does (off by default, as there).")


# --- streams ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ShiftStream:
    """One built shift stream: its name (file stem), ground truth JSON document and audio file."""

    name: str
    json_path: Path
    audio_path: Path
    doc: dict[str, Any]
    truth: StreamTruth

    @property
    def corpus(self) -> str:
        return str(self.doc.get("corpus", "?"))


def load_streams(folder: str | Path) -> list[ShiftStream]:
    """Every ``stream_*.json`` in ``folder`` (sorted) with its audio; ValueError when there is none."""
    folder = Path(folder)
    paths = sorted(folder.glob("stream_*.json"))
    if not paths:
        raise ValueError(f"{folder}: no shift streams (stream_*.json) found; build them with "
                         "`python -m trainer.streams` or pass --manifest")
    out = []
    for path in paths:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or "audio" not in doc:
            raise ValueError(f"{path}: expected a shift-stream JSON object with an 'audio' field")
        audio = path.parent / str(doc["audio"])
        if not audio.is_file():
            raise ValueError(f"{path}: its audio {audio} does not exist")
        out.append(ShiftStream(path.stem, path, audio, doc, StreamTruth.from_dict(doc, source=str(path))))
    return out


def build_and_load(manifest: str | Path, out_dir: str | Path, config: StreamBuildConfig,
                   progress: bool = True) -> list[ShiftStream]:
    """Build streams from ``manifest`` into ``out_dir`` (reused when already built with the same options)."""
    out_dir = Path(out_dir)
    index = out_dir / "streams.json"
    if index.is_file():
        built = json.loads(index.read_text(encoding="utf-8"))
        if built.get("config") == config.model_dump(mode="json") and built.get("manifest") == str(manifest):
            return load_streams(out_dir)
    build_streams(manifest, out_dir, config, progress=progress)
    return load_streams(out_dir)


# --- engine and cache ---------------------------------------------------------------------------------
class LazyEngine:
    """The configured engine, built on its first call; counts calls and windows for cache checks."""

    def __init__(self, model_dir: str | Path, config: Ct2EngineConfig | TorchEngineConfig,
                 base_dir: str | Path | None = None, prosody: bool = False, stats: bool = False) -> None:
        self.model_dir = Path(model_dir)
        self.config = config
        self.base_dir = base_dir
        self.meta: ModelMeta = read_meta(self.model_dir)
        self.labels = tuple(self.meta.labels)
        self.params = FeatureParams(**self.meta.features)
        self.centring_reference = meta_reference(self.meta.speaker_norm)
        self.prosody = prosody and self.meta.prosody is not None  # the model's term is added
        self.stats = stats and self.meta.stats is not None
        self.calls = 0
        self.windows = 0
        self._engine: Any = None

    def infer(self, mels: Sequence[np.ndarray], samples: Sequence[np.ndarray],
              offsets: Sequence[np.ndarray | None] | None = None) -> list[FrameScores]:
        """The engine's scores of ``mels``, with the model's prosody term from their ``samples`` (as the agent's
        batcher adds it)."""
        if self._engine is None:
            self._engine = make_engine(self.config, self.model_dir, self.base_dir, prosody=self.prosody,
                                       stats=self.stats)
        out: list[FrameScores] = []
        for first in range(0, len(mels), ENGINE_BATCH):
            batch = mels[first:first + ENGINE_BATCH]
            self.calls += 1
            self.windows += len(batch)
            out += self._engine.infer(batch, None if offsets is None else offsets[first:first + ENGINE_BATCH])
        return out if self._engine.prosody is None else self._engine.prosody.apply(out, samples)

    def fingerprint(self) -> dict[str, Any]:
        """What the scores depend on (thread counts do not count)."""
        engine = self.config.model_dump(mode="json", exclude={"intra_threads", "threads"})
        found = {"model_id": self.meta.model_id, "weights_sha256": self.meta.weights_sha256,
                 "features": self.meta.features, "engine": engine}
        found = found if self.meta.prosody is None else {**found, "prosody": self.prosody}
        return found if self.meta.stats is None else {**found, "stats": self.stats}


class ScoreCache:
    """Engine outputs in ``folder`` as ``.npz`` files named by stream and a hash of what made them."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(fingerprint: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]

    def load(self, name: str, fingerprint: dict[str, Any]) -> dict[str, np.ndarray] | None:
        path = self._path(name, fingerprint)
        if path is None or not path.is_file():
            self.misses += 1
            return None
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        if str(arrays.pop("fingerprint", "")) != json.dumps(fingerprint, sort_keys=True):
            log.warning("score cache %s does not match its key; recomputing", path)
            self.misses += 1
            return None
        self.hits += 1
        return arrays

    def save(self, name: str, fingerprint: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        path = self._path(name, fingerprint)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.savez(f, fingerprint=np.array(json.dumps(fingerprint, sort_keys=True)), **arrays)
        tmp.replace(path)

    def _path(self, name: str, fingerprint: dict[str, Any]) -> Path | None:
        return None if self.folder is None else self.folder / f"{name}.{self.key(fingerprint)}.npz"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the agent's stages, synchronously ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WindowTrack:
    """What the stages gave for one stream: events in pipeline order and the engine's window probabilities.

    ``kinds[i]`` is window / gap / segment start / segment end; ``values[i]`` the window index or the time.
    """

    labels: tuple[str, ...]
    kinds: np.ndarray
    values: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    probs: np.ndarray
    end_t: float

    def arrays(self) -> dict[str, np.ndarray]:
        return {"labels": np.array(self.labels), "kinds": self.kinds, "values": self.values, "t0": self.t0,
                "t1": self.t1, "probs": self.probs, "end_t": np.array(self.end_t)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> WindowTrack:
        return cls(tuple(str(x) for x in a["labels"]), a["kinds"], a["values"], a["t0"], a["t1"], a["probs"],
                   float(a["end_t"]))


def run_stages(stream_id: str, audio: np.ndarray, vad: VadConfig, windows: WindowConfig,
               block_s: float = 0.1) -> tuple[list[tuple[int, float]], list[Window], float]:
    """Feed ``audio`` in blocks through Segmenter and Windower as ``edge_ser.pipeline`` does: the events
    (kind, window index or time) in the order the smoother would see them, the windows, the end time."""
    segmenter, windower = Segmenter(stream_id, vad), Windower(stream_id, windows)
    events: list[tuple[int, float]] = []
    found: list[Window] = []
    in_speech, last_gap = False, 0.0

    def route(item: SpeechBoundary | AudioBlock) -> None:
        nonlocal in_speech
        if isinstance(item, SpeechBoundary):
            in_speech = item.kind == "start"
            events.append((SEG_START if in_speech else SEG_END, item.t))
        for window in windower.push(item):
            events.append((WINDOW, len(found)))
            found.append(window)

    step = max(1, round(block_s * SAMPLE_RATE))
    for start in range(0, len(audio), step):
        block = AudioBlock(stream_id, start / SAMPLE_RATE, audio[start:start + step])
        for item in segmenter.push(block):
            route(item)
        if not in_speech and block.t1 - last_gap >= GAP_TICK_S:
            last_gap = block.t1
            events.append((GAP, block.t1))
    for item in segmenter.flush():
        route(item)
    for window in windower.flush():
        events.append((WINDOW, len(found)))
        found.append(window)
    return events, found, len(audio) / SAMPLE_RATE


def window_track(stream: ShiftStream, engine: LazyEngine, config: StreamEvalConfig, cache: ScoreCache,
                 audio: np.ndarray | None = None) -> WindowTrack:
    """The stream's window probabilities for ``config``'s VAD and windows, from the cache when it has them."""
    reference = engine.centring_reference if config.centring.enabled else None
    fingerprint = {"kind": "windows", "version": CACHE_VERSION, "audio_sha256": _sha256(stream.audio_path),
                   "vad": config.vad.model_dump(mode="json"), "windows": config.windows.model_dump(mode="json"),
                   "block_s": config.block_s, "gap_tick_s": GAP_TICK_S, **engine.fingerprint(),
                   "centring": None if reference is None else config.centring.model_dump(mode="json")}
    name = f"{stream.name}.w{config.windows.window_s:g}-h{config.windows.hop_s:g}"
    cached = cache.load(name, fingerprint)
    if cached is not None:
        return WindowTrack.from_arrays(cached)
    if audio is None:
        audio = load_audio(stream.audio_path)
    events, windows, end_t = run_stages(stream.name, audio, config.vad, config.windows, config.block_s)
    mels = [log_mel(w.samples, engine.params) for w in windows]
    samples = [w.samples for w in windows]
    scores = engine.infer(mels, samples) if windows else []
    if reference is not None and windows:  # the feature means do not depend on the offsets: score again
        scores = engine.infer(mels, samples, stream_offsets(windows, scores, config.centring, reference))
    probs = np.stack([s.clip_probs() for s in scores]) if scores else np.zeros((0, len(engine.labels)), np.float32)
    track = WindowTrack(
        labels=engine.labels,
        kinds=np.array([k for k, _ in events], dtype=np.int8),
        values=np.array([v for _, v in events], dtype=np.float64),
        t0=np.array([w.t0 for w in windows], dtype=np.float64),
        t1=np.array([w.t1 for w in windows], dtype=np.float64),
        probs=probs.astype(np.float32),
        end_t=end_t,
    )
    cache.save(name, fingerprint, track.arrays())
    return track


def stream_offsets(windows: Sequence[Window], scores: Sequence[FrameScores], config: CentringConfig,
                   reference: np.ndarray) -> list[np.ndarray | None]:
    """Each window's stream adaptation offset, as the agent's pipeline gives it when every earlier window's
    result is in (the live agent may be a batch behind)."""
    centring = StreamCentring(config, reference)
    offsets = []
    for window, score in zip(windows, scores, strict=True):
        offsets.append(centring.offset(window.t0))
        if score.feature_mean is not None:
            centring.push(score.feature_mean, window.segment_id, window.t0, window.t1)
    return offsets


def clip_logits(stream: ShiftStream, engine: LazyEngine, cache: ScoreCache,
                audio: np.ndarray | None = None) -> np.ndarray:
    """Clip logits (n_intervals, n_labels) of each clip of the stream scored whole (``edge-ser-eval``'s view)."""
    fingerprint = {"kind": "clips", "version": CACHE_VERSION, "audio_sha256": _sha256(stream.audio_path),
                   "intervals": [[iv.start, iv.end] for iv in stream.truth.intervals], "max_clip_s": MAX_CLIP_S,
                   **engine.fingerprint()}
    cached = cache.load(f"{stream.name}.clips", fingerprint)
    if cached is not None:
        return cached["logits"]
    if audio is None:
        audio = load_audio(stream.audio_path)
    max_samples = int(MAX_CLIP_S * SAMPLE_RATE)
    clips = [audio[round(iv.start * SAMPLE_RATE):round(iv.end * SAMPLE_RATE)] for iv in stream.truth.intervals]
    mels = [prepare_mel(clip, None, None, max_samples, engine.params) for clip in clips]
    samples = [crop(clip, max_samples) for clip in clips]
    logits = np.stack([s.clip_logits() for s in engine.infer(mels, samples)]).astype(np.float32)
    cache.save(f"{stream.name}.clips", fingerprint, {"logits": logits})
    return logits


@dataclass(frozen=True, slots=True)
class ScoredStream:
    """A stream with its cached engine outputs: the window track and the whole-clip logits."""

    stream: ShiftStream
    track: WindowTrack
    clip_logits: np.ndarray


def score_streams(streams: Sequence[ShiftStream], engine: LazyEngine, config: StreamEvalConfig,
                  cache: ScoreCache, progress: bool = True) -> list[ScoredStream]:
    """Engine outputs for every stream (windows for ``config.windows`` and whole clips), cached."""
    out = []
    for stream in tqdm(streams, desc=f"streams w{config.windows.window_s:g}/h{config.windows.hop_s:g}",
                       unit="stream", disable=not progress):
        out.append(ScoredStream(stream, window_track(stream, engine, config, cache),
                                clip_logits(stream, engine, cache)))
    return out


# --- smoothing and scoring ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Replay:
    """The smoother's output for one stream, and the utterances (final per-segment labels)."""

    labels: tuple[str, ...]
    states: list[StateUpdate]
    shifts: list[Shift]
    utterances: list[Utterance]


def replay(track: WindowTrack, smoothing: SmootherSettings, label_space: str = "model") -> Replay:
    """Run a fresh smoother over the track's events as the pipeline does (segment at each speech start, push
    per window, gap ticks, flush at the end) and pool each segment's windows into an utterance."""
    labels, probs = track.labels, track.probs.astype(np.float64)
    if label_space == "4class":
        keep = [labels.index(c) for c in FOUR_CLASSES]
        labels, probs = FOUR_CLASSES, probs[:, keep] / probs[:, keep].sum(axis=1, keepdims=True)
    elif label_space != "model":
        raise ValueError(f"label_space {label_space!r}: expected 'model' or '4class'")
    smoother = make_smoother(smoothing, labels)
    tracker = UtteranceTracker(labels)
    outputs: list[StateUpdate | Shift] = []
    utterances: list[Utterance] = []
    segment = -1
    for kind, value in zip(track.kinds.tolist(), track.values.tolist(), strict=True):
        if kind == WINDOW:
            i = int(value)
            outputs += smoother.push(float(track.t0[i]), float(track.t1[i]), probs[i])
            utterances += tracker.push(segment, float(track.t0[i]), float(track.t1[i]), probs[i])
        elif kind == GAP:
            outputs += smoother.gap(value)
            utterances += tracker.close()
        elif kind == SEG_START:
            segment += 1
            outputs += smoother.segment(value)
    outputs += smoother.flush(track.end_t)
    utterances += tracker.close()
    return Replay(labels, [o for o in outputs if isinstance(o, StateUpdate)],
                  [o for o in outputs if isinstance(o, Shift)], utterances)


def four_class_label(labels: Sequence[str], probs: np.ndarray) -> str:
    """The 4-class protocol's answer for a distribution over ``labels``: the argmax over the four classes."""
    return max(FOUR_CLASSES, key=lambda c: float(probs[labels.index(c)]))


def tracking_of(truth: StreamTruth, result: Replay, tolerance_s: float = 1.0) -> TrackingResult:
    """Score a replay: emotion-to-emotion shifts at their onsets, states by their reported label, utterances
    by the 4-class argmax of their pooled probabilities."""
    shifts = [ReportedShift(s.t, s.onset) for s in result.shifts if UNCERTAIN not in (s.from_label, s.to_label)]
    utterances = [(u.start, u.end, four_class_label(result.labels, u.probs)) for u in result.utterances]
    return score_stream(truth, shifts, [(s.t, s.dominant) for s in result.states], FOUR_CLASSES, tolerance_s,
                        utterances)


def clip_confusion(scored: Iterable[ScoredStream], labels: Sequence[str]) -> np.ndarray:
    """4-class confusion matrix of the streams' clips scored whole (argmax over the four classes)."""
    y_true, logits = [], []
    for s in scored:
        for iv, row in zip(s.stream.truth.intervals, s.clip_logits, strict=True):
            index = truth_index(iv.label, "4class")
            if index is not None:
                y_true.append(index)
                logits.append(row)
    if not logits:
        return np.zeros((len(FOUR_CLASSES),) * 2, dtype=np.int64)
    pred = protocol_probs(np.stack(logits), labels, "4class").argmax(axis=1)
    return confusion_matrix(np.array(y_true), pred, len(FOUR_CLASSES))


def clip_second_ua(scored: Sequence[ScoredStream]) -> float | None:
    """Per-second UA of the seconds ``ua_final`` scores, each answered by the 4-class label of its clip scored
    whole: ``clip UA`` counts clips, this counts their seconds, so ``clip UA - this`` is the part of the gap
    that comes from weighting (long clips weigh more), and ``this - ua_final`` the part that comes from the
    stream (VAD segments, windows, pauses) rather than the whole clip."""
    results = []
    for s in scored:
        pred = protocol_probs(s.clip_logits, s.track.labels, "4class").argmax(axis=1)
        clips = [(iv.start, iv.end, FOUR_CLASSES[int(p)])
                 for iv, p in zip(s.stream.truth.intervals, pred, strict=True)]
        results.append(score_stream(s.stream.truth, [], [], FOUR_CLASSES, utterances=clips))
    return aggregate(results).ua_final if results else None


def second_outcomes(truth: StreamTruth, states: Sequence[StateUpdate],
                    labels: Sequence[str] = FOUR_CLASSES) -> dict[str, int]:
    """How each scored second was answered, under trainer.tracking's rule (the latest state at or before
    the second's end): the right label, another label, ``"uncertain"``, or no state yet."""
    times = [s.t for s in states]
    out = dict.fromkeys(("correct", "wrong", "uncertain", "none"), 0)
    for k in range(math.floor(truth.duration_s - 0.5 + 1e-9) + 1):
        true = truth.label_at(k + 0.5)
        if true is None or true not in labels:
            continue
        i = bisect.bisect_right(times, k + 1 + 1e-9) - 1
        said = None if i < 0 else states[i].dominant
        key = "none" if said is None else "correct" if said == true else "uncertain" if said == UNCERTAIN else "wrong"
        out[key] += 1
    return out


def summary(results: Sequence[TrackingResult], scored: Sequence[ScoredStream],
            replays: Sequence[Replay]) -> dict[str, Any]:
    """Pooled tracking metrics, how the seconds were answered, the clip UA of the same clips, the UA gap
    and which targets are met."""
    pooled = aggregate(results)
    clip_ua = unweighted_accuracy(clip_confusion(scored, scored[0].track.labels)) if scored else float("nan")
    metrics = pooled.to_dict()
    seconds = dict.fromkeys(("correct", "wrong", "uncertain", "none"), 0)
    for s, r in zip(scored, replays, strict=True):
        for key, n in second_outcomes(s.stream.truth, r.states).items():
            seconds[key] += n
    ua_gap = None if pooled.ua is None or np.isnan(clip_ua) else abs(clip_ua - pooled.ua)
    ua_final_gap = None if pooled.ua_final is None or np.isnan(clip_ua) else abs(clip_ua - pooled.ua_final)
    values = {**metrics, "ua_gap": ua_gap, "ua_final_gap": ua_final_gap}
    targets = {}
    for key, (op, bound) in TARGETS.items():
        value = values[key]
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        targets[key] = {"value": value, "target": f"{op} {bound:g}", "met": met}
    return {"tracking": metrics, "seconds": seconds, "clip_ua": clip_ua,
            "clip_second_ua": clip_second_ua(scored), "ua_gap": ua_gap, "ua_final_gap": ua_final_gap,
            "targets": targets}


def evaluate_scored(scored: Sequence[ScoredStream], smoothing: SmootherSettings, label_space: str = "model",
                    tolerance_s: float = 1.0) -> tuple[list[Replay], list[TrackingResult]]:
    """Smooth and score every scored stream with one smoother setting (no engine call)."""
    replays = [replay(s.track, smoothing, label_space) for s in scored]
    results = [tracking_of(s.stream.truth, r, tolerance_s) for s, r in zip(scored, replays, strict=True)]
    return replays, results


def evaluate_streams(streams: Sequence[ShiftStream], engine: LazyEngine, config: StreamEvalConfig,
                     cache: ScoreCache, plot_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """The full report for one configuration: per stream, per corpus and pooled (JSON-able)."""
    scored = score_streams(streams, engine, config, cache, progress)
    replays, results = evaluate_scored(scored, config.smoothing, config.label_space, config.tolerance_s)
    rows = []
    for s, rep, res in zip(scored, replays, results, strict=True):
        entry = summary([res], [s], [rep])
        rows.append({"name": s.stream.name, "corpus": s.stream.corpus, "speaker": s.stream.doc.get("speaker"),
                     "duration_s": s.track.end_t, "n_clips": len(s.stream.truth.intervals),
                     "n_windows": len(s.track.t0), **entry,
                     "boundaries": list(s.stream.truth.boundaries),
                     "shifts": [{"t": x.t, "onset": x.onset, "from": x.from_label, "to": x.to_label,
                                 "confidence": x.confidence} for x in rep.shifts]})
        if plot_dir is not None:
            plot_stream(s, rep, Path(plot_dir) / f"{s.stream.name}.png", engine.meta.model_id)
    per_corpus = {}
    for corpus in sorted({s.stream.corpus for s in scored}):
        keep = [i for i, s in enumerate(scored) if s.stream.corpus == corpus]
        per_corpus[corpus] = summary([results[i] for i in keep], [scored[i] for i in keep], [replays[i] for i in keep])
    return {"protocol": "4class", "model": str(engine.model_dir), "model_id": engine.meta.model_id,
            "config": config.model_dump(mode="json"), "streams": rows, "corpora": per_corpus,
            "aggregate": summary(results, scored, replays),
            "cache": {"folder": None if cache.folder is None else str(cache.folder), "hits": cache.hits,
                      "misses": cache.misses},
            "engine_calls": {"calls": engine.calls, "windows": engine.windows}}


def plot_stream(scored: ScoredStream, result: Replay, out: Path, model_id: str) -> Path:
    """One timeline PNG (edge_ser.plot) of the replay with the stream's truth; shifts are drawn at their onset
    (where they are scored), not at the decision time."""
    from edge_ser.plot import plot_timeline

    out.parent.mkdir(parents=True, exist_ok=True)
    states = [{"t": s.t, "dominant": s.dominant,
               "probs": {label: float(p) for label, p in zip(result.labels, s.probs, strict=True)}}
              for s in result.states]
    shifts = [{"t": x.onset if x.onset is not None else x.t, "from": x.from_label, "to": x.to_label}
              for x in result.shifts]
    kinds, values = scored.track.kinds, scored.track.values
    segments = [{"type": "segment_start", "t": float(v)} for k, v in zip(kinds, values, strict=True)
                if k == SEG_START]
    segments += [{"type": "utterance", "start": u.start, "end": u.end, "label": u.label} for u in result.utterances]
    return plot_timeline(states, shifts, out, truth=scored.stream.doc.get("intervals"), segments=segments,
                         title=f"{scored.stream.name} ({scored.stream.corpus}, {model_id})")


# --- report -------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def abstained(seconds: dict[str, int]) -> float | None:
    """Share of scored seconds answered 'uncertain' or before any state."""
    total = sum(seconds.values())
    return (seconds["uncertain"] + seconds["none"]) / total if total else None


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: one row per stream, then per corpus and pooled."""
    head = (f"{'stream':<14} {'corpus':<9} {'dur s':>6} {'UA/s':>6} {'UAutt':>6} {'UAclp':>6} {'clipUA':>6} "
            f"{'abst':>5} {'P':>6} {'R':>6} {'F1':>6} {'delay':>6} {'spur/min':>8}")
    lines = [head, "-" * len(head)]

    def row(name: str, corpus: str, dur: str, entry: dict[str, Any]) -> str:
        t = entry["tracking"]
        return (f"{name:<14} {corpus:<9} {dur:>6} {_fmt(t['ua']):>6} {_fmt(t['ua_final']):>6} "
                f"{_fmt(entry['clip_second_ua']):>6} {_fmt(entry['clip_ua']):>6} "
                f"{_fmt(abstained(entry['seconds']), 2):>5} "
                f"{_fmt(t['precision']):>6} {_fmt(t['recall']):>6} {_fmt(t['f1']):>6} "
                f"{_fmt(t['median_delay_s'], 2):>6} {_fmt(t['spurious_per_min'], 2):>8}")

    for r in report["streams"]:
        lines.append(row(r["name"], r["corpus"], f"{r['duration_s']:.1f}", r))
    lines.append("-" * len(head))
    for corpus, entry in report["corpora"].items():
        lines.append(row("corpus", corpus, "", entry))
    agg = report["aggregate"]
    lines.append(row("ALL", "", "", agg))
    met = ", ".join(f"{k} {v['target']}: {'met' if v['met'] else 'NOT met' if v['met'] is False else 'n/a'}"
                    for k, v in agg["targets"].items())
    lines.append(f"targets: {met}")
    return "\n".join(lines)


# --- command line (edge-ser-eval --streams) ------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--streams`` mode's options, added to ``edge-ser-eval``'s parser."""
    g = parser.add_argument_group("temporal tracking (--streams)")
    g.add_argument("--streams", action="store_true",
                   help="score temporal tracking on shift streams instead of clips (EVAL.md)")
    g.add_argument("--stream-dir", default=None,
                   help="folder of built streams (stream_*.wav + .json); with --manifest: where to build them "
                        "(default: <out stem>.streams next to --out)")
    g.add_argument("--n", type=int, default=10, help="streams to build from --manifest (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed for building streams (default %(default)s)")
    g.add_argument("--corpus", action="append", default=None, help="build streams from this corpus only "
                                                                   "(repeatable)")
    g.add_argument("--agent-config", default=None,
                   help="agent YAML to take engine/vad/windows/smoothing from (default: the agent's defaults)")
    g.add_argument("--engine", choices=["ctranslate2", "torch"], default=None, help="backend (default ctranslate2)")
    g.add_argument("--compute-type", default=None, help="ctranslate2 compute type (default int8)")
    g.add_argument("--window-s", type=float, default=None, help="window length (s)")
    g.add_argument("--hop-s", type=float, default=None, help="hop between windows (s)")
    g.add_argument("--smoother", choices=["ema", "hmm", "median", "segment"], default=None, help="smoother type")
    g.add_argument("--smoother-set", action="append", default=[], metavar="KEY=VALUE",
                   help="smoother field override, e.g. min_dwell_s=2 (repeatable)")
    g.add_argument("--label-space", choices=["model", "4class"], default=None,
                   help="smooth over all model labels (default, as the agent) or the 4 protocol classes")
    g.add_argument("--no-centring", action="store_true", help="score every window on its own (no stream "
                   "adaptation, edge_ser.centring; the agent's default adapts)")
    g.add_argument("--prosody", action="store_true", help="add the model's prosody term to each window (the "
                   "agent's model.prosody; off by default, as there)")
    g.add_argument("--stats", action="store_true", help="add the model's window-statistics term to each window "
                   "(the agent's model.stats; off by default, as there)")
    g.add_argument("--cache-dir", default=None,
                   help="engine score cache (default: <out stem>.cache next to --out; 'none' disables it)")
    g.add_argument("--plot", default=None, metavar="DIR", help="write one timeline PNG per stream here")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> StreamEvalConfig:
    """The evaluation settings: the agent YAML's sections (if any) with the command-line overrides."""
    data: dict[str, Any] = {}
    if args.agent_config:
        raw = yaml.safe_load(Path(args.agent_config).read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{args.agent_config}: the top level must be a mapping")
        data = {k: raw[k] for k in ("engine", "vad", "windows", "smoothing", "centring") if k in raw}
        model = raw.get("model")
        for key in ("prosody", "stats"):
            if isinstance(model, dict) and key in model:
                data[key] = model[key]
    engine = dict(data.get("engine") or {})
    if args.engine:
        engine = {"type": args.engine}
    engine.setdefault("type", "ctranslate2")
    if args.compute_type:
        engine["compute_type"] = args.compute_type
    if args.device != "cpu" or "device" not in engine:
        engine["device"] = args.device
    if args.threads:
        engine["intra_threads" if engine["type"] == "ctranslate2" else "threads"] = args.threads
    data["engine"] = engine
    windows = dict(data.get("windows") or {})
    if args.window_s is not None:
        windows["window_s"] = args.window_s
    if args.hop_s is not None:
        windows["hop_s"] = args.hop_s
    data["windows"] = windows
    smoothing = dict(data.get("smoothing") or {"type": "segment"})
    if args.smoother and args.smoother != smoothing.get("type"):
        smoothing = {"type": args.smoother}
    for item in args.smoother_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--smoother-set {item!r}: expected KEY=VALUE")
        smoothing[key.strip()] = yaml.safe_load(value)
    data["smoothing"] = smoothing
    if args.label_space:
        data["label_space"] = args.label_space
    if args.no_centring:
        data["centring"] = {**(data.get("centring") or {}), "enabled": False}
    if args.prosody:
        data["prosody"] = True
    if args.stats:
        data["stats"] = True
    try:
        return StreamEvalConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"stream evaluation settings: {exc}") from None


def run_from_args(args: argparse.Namespace) -> int:
    """``edge-ser-eval --streams``: evaluate, print the table, write the JSON; returns the exit status."""
    out = Path(args.out)
    try:
        config = config_from_args(args)
        if args.manifest:
            folder = Path(args.stream_dir) if args.stream_dir else out.with_name(out.stem + ".streams")
            build = StreamBuildConfig(n=args.n, seed=args.seed, corpora=tuple(args.corpus) if args.corpus else None)
            streams = build_and_load(args.manifest, folder, build, progress=not args.quiet)
        elif args.stream_dir:
            streams = load_streams(args.stream_dir)
        else:
            raise ValueError("--streams needs --stream-dir (built streams) or --manifest (to build them)")
        cache_dir = None if args.cache_dir == "none" else Path(args.cache_dir or out.with_name(out.stem + ".cache"))
        engine = LazyEngine(args.model, config.engine, args.base_dir, config.prosody, config.stats)
        report = evaluate_streams(streams, engine, config, ScoreCache(cache_dir), args.plot, not args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(format_table(report))
    log.info("%d streams, engine windows run %d, cache hits %d -> %s", len(report["streams"]),
             report["engine_calls"]["windows"], report["cache"]["hits"], out)
    return 0
