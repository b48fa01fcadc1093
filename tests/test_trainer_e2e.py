"""End to end on ~40 real clips: cache, train 1 epoch, checkpoint, evaluate CLI, resume, no-cache, DDP."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import load_file

from edge_ser.audio import load_audio
from edge_ser.backends.base import FrameScores
from edge_ser.checkpoint import ModelMeta, load_checkpoint
from edge_ser.features import FeatureParams
from edge_ser.model import EmotionModel
from trainer.config import load_config
from trainer.evaluate import build_model_from_checkpoint, predict_cached, predict_clips
from trainer.train import main as train_main
from trainer.train import prepare, training_indices

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FOUR = ("neutral", "happy", "sad", "angry")
pytestmark = pytest.mark.slow


def tiny_rows(per_corpus: int = 10) -> list[dict[str, str]]:
    manifest = DATA / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not available")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen: list[dict[str, str]] = []
    for corpus in ("casia", "emodb", "ravdess", "tess"):
        pool = [r for r in rows if r["corpus"] == corpus and r["emotion"] in (*FOUR, "surprised")]
        chosen += pool[:: max(len(pool) // per_corpus, 1)][:per_corpus]
    return chosen


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "data"
    if not link.exists():
        link.symlink_to(DATA)
    path = folder / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": row["path"] if row["path"].startswith("local/") else "data/" + row["path"]})
    return path


TINY = ["--set", "epochs=1", "--set", "views=2", "--set", "dev_fraction=0.3", "--set", "dev_min_speakers=2",
        "--set", "batch_size=8", "--set", "threads=2"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trainer")
    manifest = write_manifest(root, tiny_rows())
    cache = root / "cache"
    out = root / "run"
    code = train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(manifest),
                       "--out", str(out), "--set", f"cache_dir={cache}",
                       "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY])
    assert code == 0
    return {"root": root, "manifest": manifest, "cache": cache, "run": out}


def test_run_folder_and_checkpoint(workspace: dict[str, Path]) -> None:
    run = workspace["run"]
    for name in ("config.yaml", "metrics.json", "metrics.csv", "loss.png", "domain.png", "dev.json",
                 "state/state.json", "state/state.safetensors"):
        assert (run / name).is_file(), name
    meta, tensors = load_checkpoint(run / "model")
    assert meta.labels == ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised", "other"]
    assert meta.encoder_layers == 3 and meta.finetuned_layers == []
    assert sorted(tensors) == ["head.fc1.bias", "head.fc1.weight", "head.fc2.bias", "head.fc2.weight",
                               "norm.bias", "norm.weight"]
    assert set(meta.training["corpora"]) <= {"casia", "emodb", "ravdess", "tess"}
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert len(history) == 1 and history[0]["domain_acc"] is not None
    assert 0.0 <= history[0]["dev_ua"] <= 1.0


def test_evaluate_cli_writes_eval_json_and_matches_the_cache(workspace: dict[str, Path]) -> None:
    out = workspace["root"] / "eval" / "results.json"
    proc = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--model", str(workspace["run"] / "model"),
                           "--manifest", str(workspace["manifest"]), "--protocol", "4class", "--out", str(out),
                           "--threads", "2"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) == {"protocol", "model", "manifest", "corpora", "mean"}
    assert set(result["corpora"]) == {"casia", "emodb", "ravdess", "tess"}
    for corpus, entry in result["corpora"].items():
        assert set(entry) == {"n", "ua", "macro_f1", "wa", "ece", "confusion", "labels"}
        assert entry["labels"] == list(FOUR)
        assert np.asarray(entry["confusion"]).sum() == entry["n"]
        assert (out.parent / f"results.{corpus}.png").is_file()
    assert set(result["mean"]) == {"ua", "macro_f1", "wa"}
    # the cached path used by LOCO gives the same clip logits as decoding the audio
    config = load_config(ROOT / "configs" / "train-cpu.yaml", [f"cache_dir={workspace['cache']}", "views=2",
                                                                f"labels={ROOT / 'configs' / 'labels.yaml'}"])
    data = prepare(config, workspace["manifest"])
    model, _ = build_model_from_checkpoint(workspace["run"] / "model")
    some = list(range(0, len(data.manifest), 7))
    cached = predict_cached(model, data.cache.views[0], some, 3)
    decoded, problems = predict_clips(model, [data.manifest.clips[i] for i in some])
    assert not problems
    assert np.allclose(cached, decoded, atol=0.05)
    # the frame head's clip score is the plain mean of its frame logits (what per-second scores average)
    assert np.allclose(predict_cached(model, data.cache.views[0], some, 3, frame_mean=True), cached, atol=1e-4)


def test_evaluate_with_stream_adaptation_matches_the_cached_stream_replay(workspace: dict[str, Path]) -> None:
    """``trainer.evaluate --adapt`` (audio through the runtime engine, two passes) gives the logits the
    frozen-layer cache gives for the same replay (what ``trainer.loco --centre stream`` scores); a model
    without a reference is refused."""
    from edge_ser.backends.torch_backend import TorchEngine
    from trainer.evaluate import Adaptation, adapted_logits, evaluate
    from trainer.speaker_norm import add_reference, stream_offsets

    model_dir = workspace["root"] / "with-reference"
    shutil.copytree(workspace["run"] / "model", model_dir)
    with pytest.raises(ValueError, match="has no speaker_norm reference"):
        evaluate(model_dir, workspace["manifest"], adapt=Adaptation())
    config = load_config(ROOT / "configs" / "train-cpu.yaml", [f"cache_dir={workspace['cache']}", "views=2",
                                                                f"labels={ROOT / 'configs' / 'labels.yaml'}"])
    meta = add_reference(model_dir, config, workspace["manifest"])
    assert meta.speaker_norm is not None and not meta.speaker_norm["trained"]
    data = prepare(config, workspace["manifest"])
    clips = data.manifest.clips
    engine = TorchEngine(model_dir)
    adapted, problems = adapted_logits(engine, clips, Adaptation(prior_s=0.0, seed=3), 30.0, FeatureParams())
    assert not problems
    rows = np.asarray(data.usable)
    offsets, history = stream_offsets(clips, data.usable, data.speaker_means()[rows], data.cache.views[0].length[rows],
                                      engine.centring_reference, 0.0, 3)
    model, _ = build_model_from_checkpoint(model_dir)
    cached = predict_cached(model, data.cache.views[0], data.usable, 3, offsets=offsets)
    assert np.allclose(adapted[rows], cached, atol=0.05)
    plain = predict_cached(model, data.cache.views[0], data.usable, 3)
    assert np.abs(cached - plain)[history > 0].max() > 0.1  # clips after the first of their speaker moved
    assert np.allclose(cached[history == 0], plain[history == 0], atol=1e-5)  # first clips: nothing heard yet
    result = evaluate(model_dir, workspace["manifest"], adapt=Adaptation("grouped", 5.0, 1))
    assert result["adaptation"] == {"order": "grouped", "prior_s": 5.0, "seed": 1}


def _train_tiny_with(workspace: dict[str, Path], name: str, *settings: str
                     ) -> tuple[list[str], EmotionModel, ModelMeta]:
    """One tiny clean-view run with ``settings`` added: its overrides, its model and the model's metadata."""
    out = workspace["root"] / name
    overrides = [f"cache_dir={workspace['cache']}", f"labels={ROOT / 'configs' / 'labels.yaml'}", "views=1",
                 *settings]
    assert train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
                       "--out", str(out), *TINY, *[x for o in overrides for x in ("--set", o)]]) == 0
    model, meta = build_model_from_checkpoint(out / "model")
    return overrides, model, meta


def test_a_model_trained_on_trimmed_inputs_keeps_trimming_them(workspace: dict[str, Path]) -> None:
    """``trim_db``: the cache, the checkpoint and decoding from audio all cut the same quiet edges."""
    overrides, model, meta = _train_tiny_with(workspace, "trimmed", "trim_db=40")
    assert FeatureParams(**meta.features) == FeatureParams(trim_db=40.0)
    config = load_config(ROOT / "configs" / "train-cpu.yaml", overrides)
    trimmed = prepare(config, workspace["manifest"]).cache.views[0]
    whole = prepare(load_config(ROOT / "configs" / "train-cpu.yaml", overrides[:-1]), workspace["manifest"])
    clips = whole.manifest.clips
    assert trimmed.folder != whole.cache.views[0].folder  # a cache of its own, never the untrimmed one
    ravdess = [i for i, c in enumerate(clips) if c.corpus == "ravdess"]
    assert np.all(trimmed.length <= whole.cache.views[0].length)
    cut = whole.cache.views[0].length[ravdess] - trimmed.length[ravdess]
    assert np.sum(cut > 25) >= 0.8 * len(ravdess)  # RAVDESS: most clips lose > 0.5 s of leading/trailing silence
    some = list(range(0, len(clips), 7))
    cached = predict_cached(model, trimmed, some, 3)
    decoded, problems = predict_clips(model, [clips[i] for i in some], params=FeatureParams(**meta.features))
    assert not problems and np.allclose(cached, decoded, atol=0.05)


def test_a_model_trained_at_one_loudness_scores_any_gain_alike(workspace: dict[str, Path]) -> None:
    """``level_db``: the checkpoint carries it, the cache is its own, and a clip rewritten 20 dB quieter scores as
    the original through the real decoding path (a model without it does not)."""
    overrides, model, meta = _train_tiny_with(workspace, "levelled", "level_db=-18")
    params = FeatureParams(**meta.features)
    assert params == FeatureParams(level_db=-18.0)
    data = prepare(load_config(ROOT / "configs" / "train-cpu.yaml", overrides), workspace["manifest"])
    plain = prepare(load_config(ROOT / "configs" / "train-cpu.yaml", overrides[:-1]), workspace["manifest"])
    assert data.cache.views[0].folder != plain.cache.views[0].folder
    clips = data.manifest.clips
    some = list(range(0, len(clips), 9))
    decoded, problems = predict_clips(model, [clips[i] for i in some], params=params)
    assert not problems and np.allclose(predict_cached(model, data.cache.views[0], some, 3), decoded, atol=0.05)
    source = clips[some[0]]
    quiet = workspace["root"] / "quiet.wav"
    sf.write(quiet, load_audio(source.path) * 0.1, 16_000, subtype="FLOAT")
    pair = [source, dataclasses.replace(source, path=quiet)]
    levelled, _ = predict_clips(model, pair, params=params)
    unlevelled, _ = predict_clips(model, pair, params=FeatureParams())
    np.testing.assert_allclose(levelled[0], levelled[1], atol=1e-4)  # float rounding (measured 2e-7)
    assert np.abs(unlevelled[0] - unlevelled[1]).max() > 1e-3  # measured 0.025 after one tiny epoch


def test_resume_continues_the_history(workspace: dict[str, Path]) -> None:
    out = workspace["run"]
    code = train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
                       "--out", str(out), "--set", f"cache_dir={workspace['cache']}", "--resume",
                       "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY, "--set", "epochs=2",
                       "--set", "ema_decay=0.9"])
    assert code == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    state = load_file(str(out / "state" / "state.safetensors"))
    assert any(name.startswith("ema.model.head.") for name in state)
    assert any(name.startswith("optim.") for name in state)
    assert json.loads((out / "state" / "state.json").read_text())["ema_steps"] > 0


def test_undecodable_audio_fails_with_its_line_unless_skipped(workspace: dict[str, Path]) -> None:
    folder = workspace["root"] / "bad"
    (folder / "local").mkdir(parents=True)
    (folder / "local" / "broken.opus").write_bytes(b"OggS not really audio" * 10)
    rows = tiny_rows(3)
    rows.insert(2, {**rows[0], "path": "local/broken.opus", "speaker": "x_1"})
    manifest = write_manifest(folder, rows)
    args = ["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(manifest), "--out",
            str(folder / "run"), "--set", f"cache_dir={workspace['cache']}",
            "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY, "--set", "views=1"]
    assert train_main(args) == 2
    assert not (folder / "run" / "model").exists()
    assert train_main([*args, "--skip-bad"]) == 0
    meta, _ = load_checkpoint(folder / "run" / "model")
    assert meta.training["train_clips"] + meta.training["dev_clips"] == len(rows) - 1


def test_no_cache_training_runs_end_to_end(workspace: dict[str, Path]) -> None:
    manifest = write_manifest(workspace["root"] / "small", tiny_rows(3))
    out = workspace["root"] / "nocache"
    code = train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(manifest),
                       "--out", str(out), "--no-cache", "--set", "workers=0",
                       "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY])
    assert code == 0
    meta, _ = load_checkpoint(out / "model")
    assert meta.training["config"]["cache"] is False


@pytest.mark.parametrize("cached", [True, False])
def test_crops_and_mixup_train_from_the_cache_and_from_audio(workspace: dict[str, Path], cached: bool) -> None:
    manifest = write_manifest(workspace["root"] / "small", tiny_rows(3))
    out = workspace["root"] / f"regularized-{cached}"
    source = ["--set", f"cache_dir={workspace['cache']}"] if cached else ["--no-cache", "--set", "workers=0"]
    code = train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(manifest),
                       "--out", str(out), *source, "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY,
                       "--set", "regularize.crop_p=0.5", "--set", "regularize.mixup_p=0.5"])
    assert code == 0
    meta, _ = load_checkpoint(out / "model")
    assert meta.training["config"]["regularize"]["mixup_p"] == 0.5
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert np.isfinite(history[0]["train_loss"]) and history[0]["train_loss"] > 0


def test_contrast_frame_loss_and_style_mix_train_and_are_logged(workspace: dict[str, Path]) -> None:
    out = workspace["root"] / "contrast"
    code = train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
                       "--out", str(out), "--set", f"cache_dir={workspace['cache']}",
                       "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY,
                       "--set", "regularize.contrast_weight=0.1", "--set", "regularize.frame_loss_weight=0.5",
                       "--set", "regularize.style_mix_p=0.5", "--set", "regularize.style_mix_same_class=true"])
    assert code == 0
    entry = json.loads((out / "metrics.json").read_text())["history"][0]
    assert 0 < entry["style_mix_share"] <= 0.5  # same-class partners from another corpus are not always there
    assert np.isfinite(entry["contrast_loss"]) and entry["contrast_loss"] > 0
    assert 0 < entry["contrast_anchor_share"] <= 1
    assert np.isfinite(entry["frame_loss"]) and entry["frame_loss"] > 0
    plain = json.loads((workspace["run"] / "metrics.json").read_text())["history"][0]
    assert plain["contrast_loss"] is None and plain["frame_loss"] is None and plain["style_mix_share"] is None


def test_snapshots_merge_the_best_dev_epochs(workspace: dict[str, Path]) -> None:
    out = workspace["root"] / "snapshots"
    code = train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
                       "--out", str(out), "--set", f"cache_dir={workspace['cache']}",
                       "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY, "--set", "epochs=5",
                       "--set", "patience=5", "--set", "snapshots=3"])
    assert code == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    best3 = sorted(history, key=lambda e: (-e["dev_ua"], e["epoch"]))[:3]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == sorted(f"epoch-{e['epoch']:03d}" for e in best3)
    meta, tensors = load_checkpoint(out / "model")
    assert [m["epoch"] for m in meta.training["ensemble"]] == [e["epoch"] for e in best3]
    assert tensors["head.fc1.weight"].shape[0] == 3 * 256
    members = [load_checkpoint(out / "snapshots" / f"epoch-{e['epoch']:03d}") for e in best3]
    assert [m.metrics["dev_4class"]["ua"] for m, _ in members] == pytest.approx([e["dev_ua"] for e in best3])


def test_ddp_two_gloo_processes(workspace: dict[str, Path]) -> None:
    out = workspace["root"] / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file():
        pytest.skip("torchrun not installed next to the interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "trainer.train",
                           "--config", "configs/train-cpu.yaml", "--manifest", str(workspace["manifest"]),
                           "--out", str(out), "--set", f"cache_dir={workspace['cache']}", *TINY,
                           "--set", "threads=1"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    load_checkpoint(out / "model")
    # both ranks trained and report the same all-reduced epoch loss
    losses = re.findall(r"epoch 0: train loss ([0-9.]+)", proc.stderr)
    assert len(losses) == 2 and losses[0] == losses[1]


def test_loco_writes_folds_and_summary(workspace: dict[str, Path]) -> None:
    from trainer.loco import main as loco_main

    out = workspace["root"] / "loco"
    args = ["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
            "--out", str(out), "--folds", "casia,emodb", "--set", f"cache_dir={workspace['cache']}",
            "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY]
    assert loco_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["corpus"] for row in summary["folds"]] == ["casia", "emodb"]
    assert 0.0 <= summary["mean"]["4class"]["ua"] <= 1.0
    for corpus in ("casia", "emodb"):
        fold = out / f"fold-{corpus}"
        meta, _ = load_checkpoint(fold / "model")
        assert corpus not in meta.training["corpora"]  # the held-out corpus never trains
        test = json.loads((fold / "test.json").read_text())
        assert list(test["corpora"]) == [corpus]
    assert "| **mean** |" in (out / "summary.md").read_text()
    assert loco_main([*args, "--rescore", "--frame-mean"]) == 0
    rescored = json.loads((out / "summary.rescored.json").read_text())
    assert rescored["mean"]["4class"]["ua"] == pytest.approx(summary["mean"]["4class"]["ua"], abs=1e-6)
    # a merged ensemble of the fold models (here: each with itself) is rescored by the same driver
    from trainer.ensemble import main as ensemble_main

    ens = workspace["root"] / "loco-ens"
    assert ensemble_main([str(out), str(out), "--out", str(ens)]) == 0
    assert loco_main([*[str(ens) if a == str(out) else a for a in args], "--rescore"]) == 0
    merged = json.loads((ens / "summary.rescored.json").read_text())
    assert merged["mean"]["4class"]["ua"] == pytest.approx(summary["mean"]["4class"]["ua"], abs=1e-6)
    assert [row["best_epoch"] for row in merged["folds"]] == [f"{r['best_epoch']}+{r['best_epoch']}"
                                                              for r in summary["folds"]]
    # test-time centring: a stream shrunk all the way to the reference scores as uncentred; its clips are
    # binned by the speaker audio heard before them
    assert loco_main([*args, "--rescore", "--centre", "stream", "--prior-s", "1e12"]) == 0
    far = json.loads((out / "summary.centre-stream.json").read_text())
    assert far["mean"]["4class"]["ua"] == pytest.approx(summary["mean"]["4class"]["ua"], abs=1e-6)
    for row in far["folds"]:
        assert sum(b["n"] for b in row["adaptation"]) == row["4class"]["n"]
        assert row["adaptation"][0]["n"] > 0  # every speaker's first clip has no history
    assert "by the speaker's audio heard before the clip" in (out / "summary.centre-stream.md").read_text()
    assert loco_main([*args, "--rescore", "--centre", "speaker"]) == 0
    assert 0.0 <= json.loads((out / "summary.centre-speaker.json").read_text())["mean"]["4class"]["ua"] <= 1.0
    assert loco_main([*args, "--centre", "speaker"]) == 2  # centring at test time only goes with --rescore
    # a refit trains each fold on the dev speakers too, up to the epoch its dev run kept
    refit = workspace["root"] / "loco-refit"
    refit_args = [str(refit) if a == str(out) else a for a in args]
    assert loco_main([*refit_args, "--refit-from", str(out)]) == 0
    for row, dev_row in zip(json.loads((refit / "summary.json").read_text())["folds"], summary["folds"], strict=True):
        assert row["dev_clips"] == 0 and row["train_clips"] == dev_row["train_clips"] + dev_row["dev_clips"]
        history = json.loads((refit / f"fold-{row['corpus']}" / "metrics.json").read_text())["history"]
        assert [e["epoch"] for e in history] == list(range(dev_row["best_epoch"] + 1))
    assert loco_main([*refit_args, "--refit-from", str(out), "--set", "epochs=2"]) == 2  # another schedule
    assert loco_main([*refit_args, "--refit-from", str(workspace["root"] / "nowhere")]) == 2


def test_speaker_centred_training_stores_its_reference_and_needs_stream_adaptation(workspace: dict[str, Path]) -> None:
    from edge_ser.agent import ModelMissingError, check_model

    out = workspace["root"] / "centred"
    assert train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
                       "--out", str(out), "--set", f"cache_dir={workspace['cache']}",
                       "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY, "--set", "normalize=speaker"]) == 0
    meta, _ = load_checkpoint(out / "model")
    assert meta.speaker_norm is not None
    reference = np.asarray(meta.speaker_norm["reference"])
    # a mean of LayerNorm-standardised frames: 512 channels whose mean is 0 and mean square at most 1
    assert reference.shape == (512,) and abs(reference.mean()) < 1e-4 and 0 < (reference**2).mean() <= 1
    assert meta.speaker_norm["trained"]
    check_model(out / "model")  # the agent adapts its streams by default
    with pytest.raises(ModelMissingError, match=r"trained on speaker-centred features \(normalize: speaker\)"):
        check_model(out / "model", centring=False)
    assert train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest",  # no cache, no means
                       str(workspace["manifest"]), "--out", str(out / "x"), "--no-cache", "--set", "normalize=speaker",
                       *TINY]) == 2


def test_speaker_shift_trains_an_ordinary_model_and_needs_the_cache(workspace: dict[str, Path]) -> None:
    from edge_ser.agent import check_model

    common = ["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
              "--set", f"cache_dir={workspace['cache']}", "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY]
    plain, shifted = workspace["root"] / "unshifted", workspace["root"] / "shifted"
    assert train_main([*common, "--out", str(plain)]) == 0
    assert train_main([*common, "--out", str(shifted), "--set", "regularize.speaker_shift_p=1.0"]) == 0
    loss = [json.loads((run / "metrics.json").read_text())["history"][0]["train_loss"] for run in (plain, shifted)]
    assert loss[0] != loss[1]  # the same batches, dropout and initial weights: only the shifts differ
    meta, _ = load_checkpoint(shifted / "model")
    assert meta.speaker_norm is None  # a head for features as they come: no reference, no adaptation needed
    check_model(shifted / "model", centring=False)
    assert train_main([*common, "--out", str(shifted / "x"), "--no-cache",
                       "--set", "regularize.speaker_shift_p=0.5"]) == 2


def test_a_fine_tuned_layer_trains_and_both_engines_run_it(workspace: dict[str, Path]) -> None:
    """``trainable_layers: 1`` from the cache (bfloat16 autocast on CPU): the checkpoint carries the trained
    top layer, and CTranslate2's export computes what PyTorch computes with it."""
    import torch
    from realdata import real_windows

    from edge_ser.backends.ct2_backend import Ct2Engine
    from edge_ser.backends.torch_backend import TorchEngine
    from edge_ser.model import load_whisper_encoder
    from edge_ser.whisper_base import whisper_base_dir

    out = workspace["root"] / "tuned"
    assert train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
                       "--out", str(out), "--set", f"cache_dir={workspace['cache']}",
                       "--set", f"labels={ROOT / 'configs' / 'labels.yaml'}", *TINY, "--set", "trainable_layers=1",
                       "--set", "lr_encoder=0.001", "--set", "amp_cpu=true"]) == 0
    meta, tensors = load_checkpoint(out / "model")
    assert meta.finetuned_layers == [2]
    assert not any(name.startswith(("encoder.layers.0.", "encoder.layers.1.")) for name in tensors)
    encoder, _ = load_whisper_encoder(whisper_base_dir() / "model.bin", 3)
    base = encoder.layers[2].state_dict()
    moved = max(float(np.abs(tensors[f"encoder.layers.2.{k}"] - v.numpy()).max()) for k, v in base.items())
    assert moved > 1e-3  # the layer trained
    mels = real_windows(2)
    torch_engine = TorchEngine(out / "model")
    tuned = np.stack([s.clip_probs() for s in torch_engine.infer(mels)])
    exported = np.stack([s.clip_probs() for s in Ct2Engine(out / "model", compute_type="float32").infer(mels)])
    # the export stores the layer in the base model's float16, as it stores the frozen ones
    assert np.abs(tuned - exported).max() < 1e-3
    with torch.no_grad():  # the same model with the base layer back: the scores move by far more than that
        torch_engine.model.encoder.layers[2].load_state_dict(base)
    untuned = np.stack([s.clip_probs() for s in torch_engine.infer(mels)])
    assert np.abs(untuned - tuned).max() > 1e-2


def _runs_like_its_cache(workspace: dict[str, Path], name: str, model: EmotionModel, overrides: list[str],
                         windows: list[np.ndarray]) -> list[FrameScores]:
    """A model reading blocks 2 and 3: decoding the audio gives the cached logits and the torch engine runs it;
    returns the engine's scores of ``windows``."""
    from edge_ser.backends.torch_backend import TorchEngine

    data = prepare(load_config(ROOT / "configs" / "train-cpu.yaml", overrides), workspace["manifest"])
    view = data.cache.views[0]
    assert view.width == 1024 and (view.folder / "layer2.f16").is_file()
    clips = data.manifest.clips
    some = list(range(0, len(clips), 9))
    decoded, problems = predict_clips(model, [clips[i] for i in some])
    assert not problems and np.allclose(predict_cached(model, view, some, 3), decoded, atol=0.05)
    scores = TorchEngine(workspace["root"] / name / "model").infer(windows)
    assert len(scores) == len(windows) and all(np.isclose(s.clip_probs().sum(), 1.0) for s in scores)
    return scores


def _adapts_like_its_cache(workspace: dict[str, Path], name: str, overrides: list[str]) -> None:
    """Stream adaptation of a model reading blocks side by side: the reference holds one block's mean per block
    read, both engines measure and apply the same offsets, and the runtime's replay of each speaker's stream
    gives the logits the cache gives for it."""
    from realdata import real_windows

    from edge_ser.backends.ct2_backend import Ct2Engine
    from edge_ser.backends.torch_backend import TorchEngine
    from trainer.evaluate import Adaptation, adapted_logits
    from trainer.speaker_norm import add_reference, stream_offsets

    model_dir = workspace["root"] / f"{name}-reference"
    shutil.copytree(workspace["root"] / name / "model", model_dir)
    config = load_config(ROOT / "configs" / "train-cpu.yaml", overrides)
    meta = add_reference(model_dir, config, workspace["manifest"])
    assert meta.speaker_norm is not None and len(meta.speaker_norm["reference"]) == 1024
    windows = real_windows(1)
    torch_engine, ct2_engine = TorchEngine(model_dir), Ct2Engine(model_dir, compute_type="float32")
    plain = torch_engine.infer(windows)
    for a, b in zip(plain, ct2_engine.infer(windows), strict=True):
        assert a.feature_mean is not None and b.feature_mean is not None and a.feature_mean.shape == (1024,)
        np.testing.assert_allclose(a.feature_mean, b.feature_mean, atol=2e-3)
    offsets = [s.feature_mean - torch_engine.centring_reference for s in plain]
    moved = np.stack([s.clip_probs() for s in torch_engine.infer(windows, offsets)])
    assert np.abs(moved - np.stack([s.clip_probs() for s in ct2_engine.infer(windows, offsets)])).max() < 1e-3
    assert np.abs(moved - np.stack([s.clip_probs() for s in plain])).max() > 1e-3
    data = prepare(config, workspace["manifest"])
    clips, rows = data.manifest.clips, np.asarray(data.usable)
    adapted, problems = adapted_logits(torch_engine, clips, Adaptation(prior_s=0.0, seed=3), 30.0, FeatureParams())
    assert not problems
    cached_offsets, _ = stream_offsets(clips, data.usable, data.speaker_means()[rows],
                                       data.cache.views[0].length[rows], torch_engine.centring_reference, 0.0, 3)
    model, _ = build_model_from_checkpoint(model_dir)
    cached = predict_cached(model, data.cache.views[0], data.usable, 3, offsets=cached_offsets)
    assert np.allclose(adapted[rows], cached, atol=0.05)


def test_a_layer_mixing_model_trains_from_the_cache_and_runs_on_the_torch_engine(workspace: dict[str, Path]) -> None:
    """``mix_layers: [2, 3]``: the cache adds layer 2, the checkpoint carries the learned mix, decoding the audio
    gives the cached logits, and the CTranslate2 export (last layer only) refuses the model by name."""
    from realdata import real_windows

    from engines.ct2 import export_ct2

    overrides, model, meta = _train_tiny_with(workspace, "mixed", "mix_layers=[2,3]")
    assert meta.mix_layers == [2, 3]
    _, tensors = load_checkpoint(workspace["root"] / "mixed" / "model")
    assert tensors["layer_mix"].shape == (2,) and np.abs(tensors["layer_mix"]).max() > 0  # the mix trained
    _runs_like_its_cache(workspace, "mixed", model, overrides, real_windows(2))
    with pytest.raises(ValueError, match=r"learned mix of encoder layers \[2, 3\].*torch engine"):
        export_ct2(workspace["root"] / "mixed" / "model", workspace["root"] / "mixed-ct2")
    no_cache = workspace["root"] / "mixed-no-cache"
    assert train_main(["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
                       "--out", str(no_cache), *TINY, "--no-cache", *[x for o in overrides for x in ("--set", o)]]) == 0
    assert load_checkpoint(no_cache / "model")[0].mix_layers == [2, 3]


def test_a_model_reading_blocks_side_by_side_trains_from_the_cache_and_runs_on_both_engines(
        workspace: dict[str, Path]) -> None:
    """``layer_join: concat``: the head reads blocks 2 and 3 side by side (1024 features), decoding the audio
    gives the cached logits, the CTranslate2 engine (one encoder per block) scores as the torch one, and stream
    adaptation works on it."""
    from realdata import real_windows

    from edge_ser.backends.ct2_backend import Ct2Engine
    from engines.ct2 import export_ct2

    overrides, model, meta = _train_tiny_with(workspace, "side-by-side", "mix_layers=[2,3]", "layer_join=concat")
    assert (meta.mix_layers, meta.layer_join) == ([2, 3], "concat")
    _, tensors = load_checkpoint(workspace["root"] / "side-by-side" / "model")
    assert tensors["head.fc1.weight"].shape[1] == 1024 and "layer_mix" not in tensors
    windows = real_windows(2)
    scores = _runs_like_its_cache(workspace, "side-by-side", model, overrides, windows)
    export = export_ct2(workspace["root"] / "side-by-side" / "model", workspace["root"] / "side-by-side-ct2")
    assert (export / "block-2" / "model.bin").is_file() and (export / "block-3" / "model.bin").is_file()
    ct2 = Ct2Engine(workspace["root"] / "side-by-side" / "model", export_dir=export, compute_type="float32")
    torch_probs = np.stack([s.clip_probs() for s in scores])
    assert np.abs(np.stack([s.clip_probs() for s in ct2.infer(windows)]) - torch_probs).max() < 1e-3
    _adapts_like_its_cache(workspace, "side-by-side", overrides)


def _casia_fold_run(workspace: dict[str, Path], name: str, overrides: list[str]) -> tuple[Path, list[str]]:
    """A tiny LOCO run of the casia fold with ``overrides``, trained: its folder and its arguments."""
    from trainer.loco import main as loco_main

    out = workspace["root"] / name
    args = ["--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest", str(workspace["manifest"]),
            "--out", str(out), "--folds", "casia", *TINY, *[x for o in overrides for x in ("--set", o)]]
    assert loco_main(args) == 0
    return out, args


def test_a_prosody_classifier_is_fitted_fused_and_scored_alike_on_every_path(workspace: dict[str, Path]) -> None:
    """``prosody.enabled`` fits the classifier into the model; the cached LOCO path, ``edge-ser-eval``'s decoded
    path and the runtime engine give the same fused logits; a merge keeps it; ``trainer.prosody`` and
    ``trainer.loco --rescore`` add it to models trained without it."""
    from edge_ser.backends import TorchEngineConfig, make_engine
    from edge_ser.prosody import load_prosody
    from trainer.cache import prepare_mel
    from trainer.data import crop, read_clip
    from trainer.ensemble import main as ensemble_main
    from trainer.loco import main as loco_main
    from trainer.prosody import main as prosody_main

    overrides, model, meta = _train_tiny_with(workspace, "prosody", "prosody.enabled=true")
    model_dir = workspace["root"] / "prosody" / "model"
    assert meta.prosody == {"feature_set": "eGeMAPSv02", "weight": 0.7, "fit": {"c": 1.0, "trim_db": 40.0}}
    assert load_checkpoint(model_dir)[1]["prosody.weight"].shape == (1, 8, 88)
    config = load_config(ROOT / "configs" / "train-cpu.yaml", overrides)
    data = prepare(config, workspace["manifest"])
    assert list(workspace["cache"].glob("*/prosody-*.npz"))  # the functionals are cached beside the frames
    rows = data.usable
    bias = data.prosody_bias(config, model_dir, rows)
    assert np.abs(bias).max() > 0.05
    cached = predict_cached(model, data.cache.views[0], rows, 3) + bias
    clips = [data.manifest.clips[i] for i in rows]
    decoded, problems = predict_clips(model, clips, prosody=load_prosody(model_dir))
    assert not problems
    assert np.allclose(decoded, cached, atol=0.05)
    engine = make_engine(TorchEngineConfig(), model_dir, prosody=True)
    assert engine.prosody is not None
    audio = [read_clip(c) for c in clips[:4]]
    mels = [prepare_mel(a, None, None, 30 * 16000) for a in audio]
    fused = engine.prosody.apply(engine.infer(mels), [crop(a, 30 * 16000) for a in audio])
    assert np.allclose(np.stack([s.clip_logits() for s in fused]), decoded[:4], atol=0.05)
    # a merge keeps every member's classifier; a member without one is refused by name
    merged = workspace["root"] / "prosody-merged"
    assert ensemble_main([str(model_dir), str(model_dir), "--out", str(merged)]) == 0
    np.testing.assert_allclose(data.prosody_bias(config, merged, rows), bias, atol=1e-5)
    assert ensemble_main([str(model_dir), str(workspace["run"] / "model"), "--out", str(merged) + "-bad"]) == 2
    # the command adds one to a model trained without it
    plain = workspace["root"] / "prosody-added"
    shutil.copytree(workspace["run"] / "model", plain)
    assert prosody_main(["--model", str(plain), "--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest",
                         str(workspace["manifest"]), *[x for o in overrides for x in ("--set", o)]]) == 0
    assert load_checkpoint(plain)[0].prosody == meta.prosody
    # fitted on the clips with their quiet edges cut (the default): the trimmed functionals' statistics; with
    # fit_trim_db null, the plain ones'
    fitted_on = data.prosody_functionals(config, 40.0)[training_indices(config, data)]
    trimmed_mean = load_checkpoint(plain)[1]["prosody.mean"][0]
    np.testing.assert_allclose(trimmed_mean, fitted_on[np.isfinite(fitted_on).all(axis=1)].mean(axis=0), rtol=1e-4)
    untrimmed = workspace["root"] / "prosody-untrimmed"
    shutil.copytree(workspace["run"] / "model", untrimmed)
    assert prosody_main(["--model", str(untrimmed), "--config", str(ROOT / "configs" / "train-cpu.yaml"),
                         "--manifest", str(workspace["manifest"]), "--set", "prosody.fit_trim_db=null",
                         *[x for o in overrides for x in ("--set", o)]]) == 0
    assert load_checkpoint(untrimmed)[0].prosody["fit"] == {"c": 1.0, "trim_db": None}
    fitted_on = data.prosody_functionals(config)[training_indices(config, data)]
    untrimmed_mean = load_checkpoint(untrimmed)[1]["prosody.mean"][0]
    np.testing.assert_allclose(untrimmed_mean, fitted_on[np.isfinite(fitted_on).all(axis=1)].mean(axis=0), rtol=1e-4)
    assert not np.allclose(trimmed_mean, untrimmed_mean, rtol=1e-3)
    # a LOCO run trained without it gets one per fold when rescored with it
    out, args = _casia_fold_run(workspace, "loco-prosody", overrides[:2])
    assert load_checkpoint(out / "fold-casia" / "model")[0].prosody is None
    assert loco_main([*args, "--rescore", "--set", "prosody.enabled=true"]) == 0
    fold_meta, _ = load_checkpoint(out / "fold-casia" / "model")
    assert fold_meta.prosody == meta.prosody and "casia" not in fold_meta.training["corpora"]
    assert json.loads((out / "summary.rescored.json").read_text())["folds"][0]["4class"]["n"] > 0
    # rescored by another prosody recipe, the fold's classifier is fitted again by it, not kept
    first_mean = load_checkpoint(out / "fold-casia" / "model")[1]["prosody.mean"]
    assert loco_main([*args, "--rescore", "--set", "prosody.enabled=true", "--set", "prosody.fit_trim_db=null"]) == 0
    assert not np.allclose(load_checkpoint(out / "fold-casia" / "model")[1]["prosody.mean"], first_mean, rtol=1e-3)


def test_a_window_statistics_classifier_is_fitted_fused_and_scored_alike_on_every_path(
        workspace: dict[str, Path]) -> None:
    """``stats.enabled`` fits the classifier into the model; its term is what the cached statistics give; the
    cached LOCO path, the decoded ``edge-ser-eval`` path, the torch engine and the CTranslate2 engine agree;
    a merge keeps it (its members' LayerNorms folded); ``trainer.window_stats`` and ``trainer.loco --rescore``
    add it to models trained without it."""
    from realdata import real_windows

    from edge_ser.backends.ct2_backend import Ct2Engine
    from edge_ser.backends.torch_backend import TorchEngine
    from edge_ser.window_stats import StatsHead
    from trainer.ensemble import main as ensemble_main
    from trainer.loco import main as loco_main
    from trainer.window_stats import main as stats_main

    overrides, model, meta = _train_tiny_with(workspace, "stats", "stats.enabled=true")
    model_dir = workspace["root"] / "stats" / "model"
    assert meta.stats == {"weight": 0.3, "fit": {"c": 3.0}}
    _, tensors = load_checkpoint(model_dir)
    assert tensors["stats.weight"].shape == (1, 8, 1024)
    config = load_config(ROOT / "configs" / "train-cpu.yaml", overrides)
    data = prepare(config, workspace["manifest"])
    rows = data.usable
    plain, _ = build_model_from_checkpoint(workspace["run"] / "model")  # the same encoder, another head
    stats_model, _ = build_model_from_checkpoint(model_dir)
    assert stats_model.head.stats is not None
    stats_model.head.stats = None
    cached = predict_cached(model, data.cache.views[0], rows, 3)
    term = cached - predict_cached(stats_model, data.cache.views[0], rows, 3)
    expected = StatsHead.from_tensors(meta.stats, tensors).logit_bias(data.window_statistics()[rows])
    assert np.abs(expected).max() > 0.05
    np.testing.assert_allclose(term, expected, atol=2e-3)
    clips = [data.manifest.clips[i] for i in rows]
    decoded, problems = predict_clips(model, clips)
    assert not problems and np.allclose(decoded, cached, atol=0.05)
    windows = real_windows(3)
    torch_probs = np.stack([s.clip_probs() for s in TorchEngine(model_dir).infer(windows)])
    ct2_probs = np.stack([s.clip_probs() for s in Ct2Engine(model_dir, compute_type="float32").infer(windows)])
    assert np.abs(ct2_probs - torch_probs).max() < 1e-3
    # a merge keeps every member's classifier; a member without one is refused by name
    merged = workspace["root"] / "stats-merged"
    assert ensemble_main([str(model_dir), str(model_dir), "--out", str(merged)]) == 0
    merged_model, merged_meta = build_model_from_checkpoint(merged)
    assert merged_meta.stats == meta.stats
    np.testing.assert_allclose(predict_cached(merged_model, data.cache.views[0], rows, 3), cached, atol=1e-3)
    merged_probs = np.stack([s.clip_probs() for s in Ct2Engine(merged, compute_type="float32").infer(windows)])
    assert np.abs(merged_probs - torch_probs).max() < 1e-3
    assert ensemble_main([str(model_dir), str(workspace["run"] / "model"), "--out", str(merged) + "-bad"]) == 2
    # the command adds one to a model trained without it, fitted on every training clip's statistics
    added = workspace["root"] / "stats-added"
    shutil.copytree(workspace["run"] / "model", added)
    assert stats_main(["--model", str(added), "--config", str(ROOT / "configs" / "train-cpu.yaml"), "--manifest",
                       str(workspace["manifest"]), *[x for o in overrides for x in ("--set", o)]]) == 0
    added_meta, added_tensors = load_checkpoint(added)
    assert added_meta.stats == meta.stats
    np.testing.assert_allclose(added_tensors["stats.mean"][0],
                               data.window_statistics()[training_indices(config, data)].mean(axis=0), atol=1e-4)
    assert not np.allclose(predict_cached(build_model_from_checkpoint(added)[0], data.cache.views[0], rows, 3),
                           predict_cached(plain, data.cache.views[0], rows, 3), atol=1e-3)
    # a LOCO run trained without it gets one per fold when rescored with it
    out, args = _casia_fold_run(workspace, "loco-stats", overrides[:2])
    assert load_checkpoint(out / "fold-casia" / "model")[0].stats is None
    assert loco_main([*args, "--rescore", "--set", "stats.enabled=true"]) == 0
    fold_meta, _ = load_checkpoint(out / "fold-casia" / "model")
    assert fold_meta.stats == meta.stats and "casia" not in fold_meta.training["corpora"]
    summary = json.loads((out / "summary.rescored.json").read_text())
    assert summary["folds"][0]["4class"]["n"] > 0
