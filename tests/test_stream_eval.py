"""``edge-ser-eval --streams`` on two real shift streams with the shipped model: the report's metrics are in
range, and a second run (another smoother, plots) takes every engine output from the score cache."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_ser.types import SAMPLE_RATE
from edge_ser.vad import VadConfig
from edge_ser.windows import WindowConfig
from trainer import stream_eval
from trainer.evaluate import main as eval_main
from trainer.metrics import unweighted_accuracy
from trainer.streams import StreamBuildConfig, build_streams
from trainer.tracking import StreamTruth

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path("/work/shared/data/manifest.csv")
MODEL = ROOT / "models" / "default"

needs_data = pytest.mark.skipif(not MANIFEST.is_file(), reason=f"corpus manifest {MANIFEST} not present")
needs_model = pytest.mark.skipif(not (MODEL / "model.json").is_file(), reason="no trained model in models/default")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two emodb streams scored once with the agent's defaults (ctranslate2 int8, segment); cache filled."""
    root = tmp_path_factory.mktemp("stream-eval")
    build_streams(MANIFEST, root / "streams", StreamBuildConfig(n=2, seed=0, corpora=("emodb",)))
    out = root / "tracking.json"
    argv = ["--streams", "--model", str(MODEL), "--stream-dir", str(root / "streams"), "--cache-dir",
            str(root / "cache"), "--quiet"]
    assert eval_main([*argv, "--out", str(out)]) == 0
    return {"root": root, "report": json.loads(out.read_text()), "argv": argv}


def _in_unit(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 1.0


@needs_data
@needs_model
def test_report_has_every_metric_in_range(first_run: dict[str, Any]) -> None:
    report = first_run["report"]
    assert report["model_id"] == json.loads((MODEL / "model.json").read_text())["model_id"]
    assert report["config"]["engine"]["type"] == "ctranslate2" and report["config"]["engine"]["compute_type"] == "int8"
    assert [s["name"] for s in report["streams"]] == ["stream_000", "stream_001"]
    for entry in [*report["streams"], report["aggregate"], *report["corpora"].values()]:
        t = entry["tracking"]
        assert _in_unit(t["ua"]) and _in_unit(t["ua_final"]) and _in_unit(t["wa"]) and _in_unit(entry["clip_ua"])
        assert _in_unit(entry["clip_second_ua"])
        assert entry["ua_gap"] == pytest.approx(abs(entry["clip_ua"] - t["ua"]))
        assert entry["ua_final_gap"] == pytest.approx(abs(entry["clip_ua"] - t["ua_final"]))
        assert sum(t["final_total"].values()) == t["n_seconds"]  # the same seconds, answered by utterances
        seconds = entry["seconds"]  # every scored second answered right, wrong, 'uncertain' or not yet
        assert sum(seconds.values()) == t["n_seconds"] and seconds["correct"] == sum(t["class_correct"].values())
        assert t["n_true"] >= 3  # at least 4 clips per stream
        for key in ("precision", "recall", "f1"):
            assert t[key] is None or 0.0 <= t[key] <= 1.0
        assert t["median_delay_s"] is None or math.isfinite(t["median_delay_s"])
        assert t["spurious_per_min"] is None or 0.0 <= t["spurious_per_min"] <= t["unmatched_per_min"]
        assert set(entry["targets"]) == {"f1", "median_delay_s", "spurious_per_min", "ua_final_gap"}
    agg = report["aggregate"]["tracking"]
    assert agg["n_streams"] == 2 and agg["n_true"] == sum(s["tracking"]["n_true"] for s in report["streams"])
    assert agg["n_seconds"] > 10
    for stream in report["streams"]:
        assert stream["n_windows"] > 0 and stream["duration_s"] > 4.0
        for shift in stream["shifts"]:
            assert 0.0 <= shift["t"] <= stream["duration_s"] + 1e-6 and shift["from"] != shift["to"]
    assert report["engine_calls"]["windows"] > 0 and report["cache"]["misses"] == 4  # windows + clips, 2 streams
    assert len(list((first_run["root"] / "cache").glob("*.npz"))) == 4


@needs_data
@needs_model
def test_second_run_uses_only_the_cache(first_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_engine(*args: object, **kwargs: object) -> None:
        raise AssertionError("the engine was built although every score was cached")

    monkeypatch.setattr(stream_eval, "make_engine", no_engine)
    root = first_run["root"]
    out, plots = root / "again.json", root / "png"
    # The same window scores under another smoother, plus the timeline plots: no encoder run at all.
    assert eval_main([*first_run["argv"], "--out", str(out), "--smoother", "hmm", "--plot", str(plots)]) == 0
    report = json.loads(out.read_text())
    assert report["engine_calls"] == {"calls": 0, "windows": 0}
    assert report["cache"]["hits"] == 4 and report["cache"]["misses"] == 0
    assert report["config"]["smoothing"]["type"] == "hmm"
    assert report["aggregate"]["clip_ua"] == first_run["report"]["aggregate"]["clip_ua"]
    assert sorted(p.name for p in plots.glob("*.png")) == ["stream_000.png", "stream_001.png"]


@needs_data
@needs_model
def test_stream_adaptation_is_part_of_what_the_window_scores_are_cached_under(first_run: dict[str, Any]) -> None:
    root = first_run["root"]
    assert first_run["report"]["config"]["centring"]["enabled"]  # the agent's default
    out = root / "plain.json"
    assert eval_main([*first_run["argv"], "--out", str(out), "--no-centring"]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["centring"]["enabled"] is False
    assert report["cache"]["hits"] == 2 and report["cache"]["misses"] == 2  # whole clips cached, windows not
    # centred, every window was scored twice (once for its feature mean, once centred); plain, once
    windows = report["engine_calls"]["windows"]
    assert first_run["report"]["engine_calls"]["windows"] > 2 * windows


@needs_data
@needs_model
def test_the_prosody_term_is_off_as_in_the_agent_and_part_of_the_cache_key_when_on(first_run: dict[str, Any]
                                                                                    ) -> None:
    """The shipped model has a prosody classifier; stream scoring leaves its term off, as the agent does, and
    ``--prosody`` scores every window and clip again (none of the plain scores is reused), then from cache."""
    root = first_run["root"]
    assert first_run["report"]["config"]["prosody"] is False
    for name, hits, misses in (("prosody.json", 0, 4), ("prosody-again.json", 4, 0)):
        out = root / name
        assert eval_main([*first_run["argv"], "--out", str(out), "--prosody"]) == 0
        report = json.loads(out.read_text())
        assert report["config"]["prosody"] is True
        assert (report["cache"]["hits"], report["cache"]["misses"]) == (hits, misses)


@needs_data
@needs_model
def test_the_window_statistics_term_is_off_as_in_the_agent_and_part_of_the_cache_key_when_on(
        first_run: dict[str, Any]) -> None:
    """The shipped model has a window-statistics classifier; stream scoring leaves its term off, as the agent
    does, and ``--stats`` (or the agent YAML's ``model.stats``) scores every window and clip again with it."""
    root = first_run["root"]
    assert first_run["report"]["config"]["stats"] is False
    agent_yaml = root / "agent-stats.yaml"
    agent_yaml.write_text("model:\n  stats: true\n")
    for name, extra, hits, misses in (("stats.json", ["--stats"], 0, 4),
                                      ("stats-again.json", ["--agent-config", str(agent_yaml)], 4, 0)):
        out = root / name
        assert eval_main([*first_run["argv"], "--out", str(out), *extra]) == 0
        report = json.loads(out.read_text())
        assert report["config"]["stats"] is True
        assert (report["cache"]["hits"], report["cache"]["misses"]) == (hits, misses)


def test_stages_tick_gaps_through_silence_and_window_speech_in_pipeline_order() -> None:
    """Pure ordering check on tiny synthetic audio: 2 s of silence (gap ticks every 0.5 s, no windows)."""
    events, windows, end_t = stream_eval.run_stages("s", np.zeros(2 * SAMPLE_RATE, np.float32), VadConfig(),
                                                    WindowConfig(), block_s=0.1)
    assert windows == [] and end_t == 2.0
    assert [round(t, 3) for kind, t in events] == [0.5, 1.0, 1.5, 2.0]
    assert {kind for kind, _ in events} == {1}


def test_clip_second_ua_weights_each_clip_by_its_seconds() -> None:
    """A long clip called wrong weighs its seconds per second, not one vote per clip (pure logic)."""
    labels = ("neutral", "happy", "sad", "angry")
    truth = StreamTruth.from_dict({"intervals": [{"start": 0.0, "end": 1.0, "label": "neutral"},
                                                 {"start": 1.5, "end": 4.5, "label": "neutral"},
                                                 {"start": 5.0, "end": 6.0, "label": "happy"}],
                                   "boundaries": [5.0]})
    stream = stream_eval.ShiftStream("s", Path("s.json"), Path("s.opus"), {"corpus": "x"}, truth)
    empty = np.zeros(0)
    track = stream_eval.WindowTrack(labels, empty, empty, empty, empty, np.zeros((0, 4)), 6.0)
    said = np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.7, 0.1, 0.1]]))
    scored = [stream_eval.ScoredStream(stream, track, said)]
    # clips: neutral 1 of 2 right, happy 1 of 1 -> 0.75; seconds: neutral 1 of 4 (0.5 | 1.5 2.5 3.5), happy 1 of 1
    assert unweighted_accuracy(stream_eval.clip_confusion(scored, labels)) == pytest.approx(0.75)
    assert stream_eval.clip_second_ua(scored) == pytest.approx(0.625)
