"""The prosody classifier: openSMILE functionals of real speech, the logistic regression's fit (pure logic, on
synthetic features), the fused scores, the checkpoint's checks and the merge of members."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_ser.audio import load_audio
from edge_ser.backends.base import FrameScores
from edge_ser.checkpoint import CheckpointError, ModelMeta, load_checkpoint, save_checkpoint
from edge_ser.features import DEFAULT_PARAMS, trim_quiet_edges
from edge_ser.linear_probe import ProbeError, log_softmax
from edge_ser.prosody import (
    N_FUNCTIONALS,
    Functionals,
    ProsodyHead,
    ProsodyScorer,
    load_prosody,
)
from edge_ser.types import EMOTIONS
from trainer.prosody import fit_prosody

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "emodb_shifts.opus"


def _head(seed: int = 0, members: int = 1, classes: int = 8, fusion: float = 0.3) -> ProsodyHead:
    rng = np.random.default_rng(seed)
    return ProsodyHead(rng.normal(0, 1, (members, N_FUNCTIONALS)).astype(np.float32),
                       rng.uniform(0.5, 2, (members, N_FUNCTIONALS)).astype(np.float32),
                       rng.normal(0, 0.3, (members, classes, N_FUNCTIONALS)).astype(np.float32),
                       rng.normal(0, 1, (members, classes)).astype(np.float32), fusion_weight=fusion)


def test_functionals_of_real_speech_and_of_a_window_too_short_to_measure() -> None:
    audio = load_audio(CLIP)[: 2 * 16000]
    extract = Functionals()
    values = extract(audio)
    assert values.shape == (N_FUNCTIONALS,) and values.dtype == np.float32 and np.isfinite(values).all()
    np.testing.assert_array_equal(extract(audio), values)  # the extractor keeps no state between windows
    assert not np.allclose(extract(audio * 0.1), values)  # loudness is one of the things it measures
    short = extract(audio[:320])
    assert np.isnan(short).all()
    head = _head()
    # a functional that cannot be measured reads as the training mean
    np.testing.assert_allclose(head.log_probs(short[None]), head.log_probs(head.mean[:1]), atol=1e-6)


def test_fit_learns_the_classes_and_places_absent_ones_far_below() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, N_FUNCTIONALS))
    top = rng.integers(0, 3, 600)
    x = (centres[top] + rng.normal(0, 1, (600, N_FUNCTIONALS))) * 50 + 100  # unstandardised scale and offset
    targets = np.zeros((600, 8), np.float32)
    targets[np.arange(600), [(0, 2, 5)[t] for t in top]] = 1.0  # classes 0, 2 and 5 of 8
    head = fit_prosody(x.astype(np.float32), targets, np.ones(600, np.float32), 1.0, 0.3)
    assert head.weight.shape == (1, 8, N_FUNCTIONALS) and head.fusion_weight == 0.3
    probs = np.exp(head.log_probs(x.astype(np.float32)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == targets.argmax(axis=1)).mean() > 0.95
    assert probs[:, [1, 3, 4, 6, 7]].max() < 1e-3  # never trained: about e^-10 of the likeliest
    some = x[:5].astype(np.float32)
    np.testing.assert_allclose(head.logit_bias(some), 0.3 * head.log_probs(some), rtol=1e-6)


def test_fit_in_the_binary_case_and_refusals() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (200, N_FUNCTIONALS)).astype(np.float32)
    top = (x[:, 0] > 0).astype(int) * 3  # classes 0 and 3
    targets = np.eye(4, dtype=np.float32)[top]
    head = fit_prosody(x, targets, np.ones(200, np.float32), 1.0, 1.0)
    assert (head.log_probs(x).argmax(axis=1) == top).mean() > 0.95
    x[5] = np.nan  # a clip whose functionals could not be measured is left out, not fitted as zeros
    assert fit_prosody(x, targets, np.ones(200, np.float32), 1.0, 1.0).weight.shape == (1, 4, N_FUNCTIONALS)
    with pytest.raises(ValueError, match="1 class"):
        fit_prosody(x, np.eye(4, dtype=np.float32)[np.zeros(200, int)], np.ones(200, np.float32), 1.0, 1.0)
    with pytest.raises(ValueError, match="prosody: 200 feature rows, 199 targets"):
        fit_prosody(x, targets[1:], np.ones(200, np.float32), 1.0, 1.0)


def test_merged_members_average_their_log_probabilities() -> None:
    a, b = _head(1), _head(2)
    x = np.random.default_rng(3).normal(0, 1, (6, N_FUNCTIONALS)).astype(np.float32)
    merged = ProsodyHead.merge([a, b])
    assert merged.weight.shape == (2, 8, N_FUNCTIONALS)
    np.testing.assert_allclose(merged.log_probs(x), (a.log_probs(x) + b.log_probs(x)) / 2, atol=1e-5)
    with pytest.raises(ProbeError, match=r"different fusion weights \[0.3, 0.5\]"):
        ProsodyHead.merge([a, _head(2, fusion=0.5)])
    with pytest.raises(ProbeError, match="fitted differently"):
        ProsodyHead.merge([a, replace(b, fit={"c": 1.0, "trim_db": 40.0})])


def test_the_bias_moves_clip_and_per_second_scores_alike() -> None:
    logits = np.random.default_rng(4).normal(0, 1, (120, 8)).astype(np.float32)
    plain = FrameScores(logits=logits, weights=np.full(120, 1 / 120, np.float32))
    bias = log_softmax(np.arange(8, dtype=np.float32))
    fused = FrameScores(logits=logits, weights=plain.weights, bias=bias)
    np.testing.assert_allclose(fused.clip_logits(), plain.clip_logits() + bias, atol=1e-6)
    np.testing.assert_allclose(fused.per_second_logits(), plain.per_second_logits() + bias, atol=1e-6)
    np.testing.assert_allclose(fused.clip_probs(), np.exp(log_softmax(plain.clip_logits() + bias)), atol=1e-6)


def test_the_scorer_adds_each_windows_own_term() -> None:
    audio = load_audio(CLIP)
    windows = [audio[:32000], audio[48000:80000]]
    scorer = ProsodyScorer(_head())
    scores = [FrameScores(logits=np.zeros((100, 8), np.float32), weights=np.full(100, 0.01, np.float32))] * 2
    fused = scorer.apply(scores, windows)
    expected = scorer.head.logit_bias(np.stack([Functionals()(w) for w in windows]))
    np.testing.assert_allclose(np.stack([s.clip_logits() for s in fused]), expected, atol=1e-5)
    assert not np.allclose(expected[0], expected[1])
    with pytest.raises(ValueError, match="2 scores for 1 windows"):
        scorer.apply(scores, windows[:1])


def _meta() -> ModelMeta:
    return ModelMeta(model_id="unit", labels=list(EMOTIONS), encoder_layers=3,
                     head={"type": "frame", "hidden": 16, "dropout": 0.0}, features=DEFAULT_PARAMS.to_dict())


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"norm.weight": np.ones(512, np.float32), "norm.bias": np.zeros(512, np.float32),
            "head.fc1.weight": rng.standard_normal((16, 512)).astype(np.float32),
            "head.fc1.bias": np.zeros(16, np.float32),
            "head.fc2.weight": rng.standard_normal((8, 16)).astype(np.float32),
            "head.fc2.bias": np.zeros(8, np.float32)}


def test_a_checkpoint_carries_the_classifier_and_its_damage_is_named(tmp_path: Path) -> None:
    head = replace(_head(members=2), fit={"c": 1.0, "trim_db": 40.0})  # how it was fitted, for the record
    meta = _meta()
    meta.prosody = head.meta()
    save_checkpoint(tmp_path / "ok", meta, {**_tensors(), **head.tensors()})
    scorer = load_prosody(tmp_path / "ok")
    assert scorer is not None and scorer.head.fusion_weight == pytest.approx(0.3)
    np.testing.assert_array_equal(scorer.head.weight, head.weight)
    save_checkpoint(tmp_path / "none", _meta(), _tensors())
    assert load_prosody(tmp_path / "none") is None
    cases = [
        ({"feature_set": "ComParE_2016", "weight": 0.3}, head.tensors(), "only 'eGeMAPSv02' is known"),
        ({"feature_set": "eGeMAPSv02", "weight": -1}, head.tensors(), "weight must be a number in 0..10"),
        ({"feature_set": "eGeMAPSv02"}, head.tensors(), r"'feature_set', 'weight' \(and 'fit'\)"),
        (head.meta(), {k: v for k, v in head.tensors().items() if k != "prosody.bias"},
         r"missing tensors \['prosody.bias'\]"),
        (head.meta(), {**head.tensors(), "prosody.weight": head.weight[:, :4]},
         r"'prosody.weight' has shape \(2, 4, 88\); expected \(2, 8, 88\)"),
        (head.meta(), {**head.tensors(), "prosody.scale": -head.scale}, "'prosody.scale' must be positive"),
        ({**head.meta(), "fit": {"c": 1.0}}, head.tensors(), "prosody.fit must be an object with 'c' and 'trim_db'"),
        ({**head.meta(), "fit": {"c": 0, "trim_db": None}}, head.tensors(), "prosody.fit.c must be a positive number"),
        ({**head.meta(), "fit": {"c": 1.0, "trim_db": "40"}}, head.tensors(),
         "prosody.fit.trim_db must be a positive number or null"),
    ]
    for k, (entry, tensors, message) in enumerate(cases):
        bad = _meta()
        bad.prosody = entry
        with pytest.raises(CheckpointError, match=message):
            save_checkpoint(tmp_path / f"bad{k}", bad, {**_tensors(), **tensors})
    loaded, _ = load_checkpoint(tmp_path / "ok")
    assert loaded.prosody == {"feature_set": "eGeMAPSv02", "weight": pytest.approx(0.3),
                              "fit": {"c": 1.0, "trim_db": 40.0}}
    assert scorer.head.fit == {"c": 1.0, "trim_db": 40.0}


MODEL = ROOT / "models" / "default"


@pytest.mark.skipif(not (MODEL / "model.json").is_file(), reason="no trained model in models/default")
def test_the_agents_batcher_adds_the_shipped_models_term_when_configured_on() -> None:
    """The shipped model carries a classifier; the agent leaves it off unless ``model.prosody: true``, and then
    its batcher adds each window's own term."""
    from edge_ser.backends import Ct2EngineConfig, make_engine
    from edge_ser.batching import BatchingConfig, DynamicBatcher
    from edge_ser.config import ModelConfig
    from edge_ser.features import FeatureParams
    from edge_ser.types import Window

    meta, _ = load_checkpoint(MODEL)
    assert meta.prosody is not None and meta.prosody["fit"]["trim_db"] is not None
    assert ModelConfig().prosody is False  # the agent's default: the term does not lift its windows
    engine = make_engine(Ct2EngineConfig(), MODEL, prosody=True)
    assert engine.prosody is not None and engine.prosody.head.fusion_weight == pytest.approx(meta.prosody["weight"])
    audio = load_audio(CLIP)
    windows = [Window("s", 0, 0.0, 2.0, audio[:32000]), Window("s", 1, 3.0, 4.5, audio[48000:72000])]
    params = FeatureParams(**meta.features)
    fused = DynamicBatcher(engine, BatchingConfig(), params)._infer(windows)
    expected = engine.prosody.bias([w.samples for w in windows])
    assert np.abs(expected).max() > 0.05
    for scores, bias in zip(fused, expected, strict=True):
        np.testing.assert_allclose(scores.bias, bias, atol=1e-6)
    plain_engine = make_engine(Ct2EngineConfig(), MODEL, prosody=ModelConfig().prosody)
    assert plain_engine.prosody is None
    plain = DynamicBatcher(plain_engine, BatchingConfig(), params)._infer(windows)
    for with_term, without, bias in zip(fused, plain, expected, strict=True):
        assert without.bias is None
        np.testing.assert_allclose(with_term.clip_logits(), without.clip_logits() + bias, atol=1e-4)


def test_clip_functionals_are_cached_and_an_interrupted_run_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    import trainer.prosody as training_side
    from trainer.data import load_manifest

    data = ROOT.parent / "shared" / "data"
    if not (data / "manifest.csv").is_file():
        pytest.skip("no corpus manifest")
    lines = (data / "manifest.csv").read_text().splitlines()
    (tmp_path / "data").symlink_to(data)
    manifest_path = tmp_path / "manifest.csv"
    manifest_path.write_text("\n".join([lines[0], *("data/" + line for line in lines[1:4])]) + "\n")
    manifest = load_manifest(manifest_path)
    calls: list[int] = []
    real = training_side._clip_functionals
    interrupt_at = [3]  # the third clip measured raises, as a Ctrl-C would

    def counted(job: tuple[int, Path, int, float | None]) -> tuple[int, np.ndarray | None]:
        calls.append(job[0])
        if len(calls) in interrupt_at:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(training_side, "_clip_functionals", counted)
    with pytest.raises(KeyboardInterrupt):
        training_side.clip_functionals(manifest, [0, 1, 2], tmp_path / "cache", 8.0)
    calls.clear()
    interrupt_at.clear()
    values = training_side.clip_functionals(manifest, [0, 1, 2], tmp_path / "cache", 8.0)
    assert calls == [2]  # the two clips measured before the interruption were kept
    assert np.isfinite(values).all()
    calls.clear()
    again = training_side.clip_functionals(manifest, [0, 1, 2], tmp_path / "cache", 8.0)
    assert calls == [] and np.array_equal(again, values)
    audio = load_audio(manifest.clips[0].path)[: 8 * 16000]
    np.testing.assert_allclose(values[0], Functionals()(audio), atol=1e-5)
    trimmed = training_side.clip_functionals(manifest, [0, 1, 2], tmp_path / "cache", 8.0, trim_db=40.0)
    assert calls == [0, 1, 2]  # its own cache file beside the untrimmed one, which stays
    assert len(list((tmp_path / "cache").glob("*/prosody-*.npz"))) == 2
    trimmed_audio = trim_quiet_edges(audio, 40.0)
    assert len(trimmed_audio) < len(audio)  # the corpus clip has quiet edges to cut
    np.testing.assert_allclose(trimmed[0], Functionals()(trimmed_audio), atol=1e-5)
    assert not np.allclose(trimmed[0], values[0])
