"""Checkpoint folders: written and read without pickle, checksum enforced, damage named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_ser.checkpoint import CheckpointError, ModelMeta, load_checkpoint, read_meta, save_checkpoint
from edge_ser.features import DEFAULT_PARAMS, FeatureParams
from edge_ser.types import EMOTIONS


def _tensors(n_classes: int = 8, hidden: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "norm.weight": np.ones(512, np.float32), "norm.bias": np.zeros(512, np.float32),
        "head.fc1.weight": rng.standard_normal((hidden, 512)).astype(np.float32),
        "head.fc1.bias": np.zeros(hidden, np.float32),
        "head.fc2.weight": rng.standard_normal((n_classes, hidden)).astype(np.float32),
        "head.fc2.bias": np.zeros(n_classes, np.float32),
    }


def _meta() -> ModelMeta:
    return ModelMeta(model_id="unit", labels=list(EMOTIONS), encoder_layers=3,
                     head={"type": "frame", "hidden": 16, "dropout": 0.0}, features=DEFAULT_PARAMS.to_dict())


def test_roundtrip(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _meta(), _tensors())
    meta, tensors = load_checkpoint(tmp_path)
    assert meta.labels == list(EMOTIONS)
    assert len(meta.weights_sha256) == 64
    np.testing.assert_array_equal(tensors["head.fc1.weight"], _tensors()["head.fc1.weight"])
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644  # readable by a service user


def test_feature_params_with_trimming_roundtrip(tmp_path: Path) -> None:
    meta = _meta()
    meta.features = FeatureParams(trim_db=40.0).to_dict()
    save_checkpoint(tmp_path, meta, _tensors())
    assert FeatureParams(**read_meta(tmp_path).features) == FeatureParams(trim_db=40.0)


def test_feature_params_with_a_loudness_target_roundtrip(tmp_path: Path) -> None:
    meta = _meta()
    meta.features = FeatureParams(trim_db=40.0, level_db=-18.0).to_dict()
    save_checkpoint(tmp_path, meta, _tensors())
    assert FeatureParams(**read_meta(tmp_path).features) == FeatureParams(trim_db=40.0, level_db=-18.0)


def test_tampered_weights_fail_the_checksum(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _meta(), _tensors())
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .* does not match"):
        load_checkpoint(tmp_path)


def test_missing_tensor_and_label_mismatch_are_named(tmp_path: Path) -> None:
    tensors = _tensors()
    del tensors["head.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"missing tensors \['head.fc2.bias'\]"):
        save_checkpoint(tmp_path, _meta(), tensors)
    with pytest.raises(CheckpointError, match=r"'head.fc2.weight' has shape \(4, 16\); expected \(8, 16\) \(8 labels"):
        save_checkpoint(tmp_path, _meta(), _tensors(n_classes=4))
    mixing = _meta()
    mixing.mix_layers = [2, 3]
    with pytest.raises(CheckpointError, match=r"missing tensors \['layer_mix'\]"):
        save_checkpoint(tmp_path, mixing, _tensors())
    with pytest.raises(CheckpointError, match=r"'layer_mix' has shape \(3,\); expected \(2,\)"):
        save_checkpoint(tmp_path, mixing, {**_tensors(), "layer_mix": np.zeros(3, dtype=np.float32)})
    side_by_side = _meta()
    side_by_side.mix_layers, side_by_side.layer_join = [2, 3], "concat"
    with pytest.raises(CheckpointError, match=r"'head.fc1.weight' has shape \(16, 512\); expected \(16, 1024\)"):
        save_checkpoint(tmp_path, side_by_side, _tensors())
    wide = {**_tensors(), "head.fc1.weight": np.zeros((16, 1024), dtype=np.float32)}
    assert load_checkpoint(save_checkpoint(tmp_path, side_by_side, wide))[0].layer_join == "concat"
    side_by_side.speaker_norm = {"reference": [0.0] * 512, "trained": False}
    with pytest.raises(CheckpointError, match=r"reference has 512 values; expected one per feature the head reads, "
                                              r"1024"):
        save_checkpoint(tmp_path, side_by_side, wide)
    side_by_side.speaker_norm = {"reference": [0.0] * 1024, "trained": False}  # one block's reference per block
    assert len(load_checkpoint(save_checkpoint(tmp_path, side_by_side, wide))[0].speaker_norm["reference"]) == 1024
    meta_file = tmp_path / "model.json"
    meta_file.write_text(meta_file.read_text().replace('"layer_join": "concat"', '"layer_join": "sum"'))
    with pytest.raises(CheckpointError, match=r"json: 'layer_join' must be one of \['mix', 'concat'\], got 'sum'"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other/9"), "format 'other/9'"),
        (lambda d: d.update(encoder_layers=-1), "encoder_layers"),
        (lambda d: d.update(surprise=1), r"unknown fields \['surprise'\]"),
        (lambda d: d.update(finetuned_layers=[7]), r"finetuned_layers' \[7\]"),
        (lambda d: d.update(mix_layers=[3]), r"mix_layers \[3\] must be two or more increasing ints"),
        (lambda d: d.update(mix_layers=[2, 2, 3]), r"mix_layers \[2, 2, 3\] must be"),
        (lambda d: d.update(mix_layers=[1, 2]), r"ending with 3"),
        (lambda d: d.update(mix_layers="2,3"), "'mix_layers' must be a list of ints"),
        (lambda d: d["head"].update(type="rnn"), "head.type"),
        (lambda d: d["features"].update(trim_db=-3.0), r"'features' values must be positive ints \(trim_db"),
        (lambda d: d["features"].update(n_mels=80.5), "'features' values"),
        (lambda d: d["features"].update(level_db=6.0), r"level_db must be between -60\.0 and -3\.0 dBFS"),
        (lambda d: d["features"].update(window="hann"), "'features' values"),
        (lambda d: d.update(speaker_norm={"reference": ["a"], "trained": False}), "'speaker_norm' must be null"),
        (lambda d: d.update(speaker_norm={"reference": [0.0]}), "a boolean 'trained'"),
        (lambda d: d.update(speaker_norm=[0.0]), "'speaker_norm' must be null or an object"),
    ],
)
def test_bad_metadata_is_refused(tmp_path: Path, edit, message: str) -> None:
    save_checkpoint(tmp_path, _meta(), _tensors())
    path = tmp_path / "model.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message):
        read_meta(tmp_path)


def test_garbage_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_bytes(b"\x00\xff garbage")
    with pytest.raises(CheckpointError, match=r"model\.json"):
        read_meta(tmp_path)
    with pytest.raises(CheckpointError, match="not an edge-ser model folder"):
        read_meta(tmp_path / "nowhere")


def test_speaker_norm_roundtrips_and_its_width_is_checked(tmp_path: Path) -> None:
    meta = _meta()
    meta.speaker_norm = {"reference": [0.5] * 512, "trained": False}
    save_checkpoint(tmp_path / "ok", meta, _tensors())
    assert load_checkpoint(tmp_path / "ok")[0].speaker_norm == {"reference": [0.5] * 512, "trained": False}
    meta.speaker_norm = {"reference": [0.5] * 100, "trained": True}
    with pytest.raises(CheckpointError, match=r"speaker_norm.reference has 100 values; expected one per feature "
                                              r"the head reads, 512"):
        save_checkpoint(tmp_path / "bad", meta, _tensors())
