"""CTranslate2 ``model.bin`` reading/writing on the real whisper-base file, and clear errors on damage."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from edge_ser.ct2_format import Ct2FormatError, Ct2Model, read_model, write_model
from edge_ser.whisper_base import WHISPER_BASE_BYTES, whisper_base_dir


def test_whisper_base_is_reassembled_from_the_pypi_parts() -> None:
    folder = whisper_base_dir()
    assert (folder / "model.bin").stat().st_size == WHISPER_BASE_BYTES
    assert (folder / "config.json").is_file()


def test_reads_the_encoder_of_whisper_base() -> None:
    model = read_model(whisper_base_dir() / "model.bin", only_prefix="encoder/")
    assert model.name == "WhisperSpec"
    variables = model.variables
    assert variables["encoder/conv1/weight"].shape == (512, 80, 3)
    assert variables["encoder/position_encodings/encodings"].shape == (1500, 512)
    layers = {name.split("/")[1] for name in variables if name.startswith("encoder/layer_") and "norm" not in name}
    assert len(layers) == 6
    assert int(variables["encoder/num_heads"]) == 8


def test_roundtrip_keeps_every_variable_and_scalar(tmp_path: Path) -> None:
    model = Ct2Model(name="WhisperSpec", revision=3, variables={
        "a/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a/scalar": np.array(8, dtype=np.int8),
        "b/bias": np.ones(4, np.float32),
    }, aliases={"c": "a/weight"})
    write_model(model, tmp_path / "model.bin")
    back = read_model(tmp_path / "model.bin")
    assert back.aliases == {"c": "a/weight"}
    assert back.variables["a/scalar"].shape == ()
    for name, value in model.variables.items():
        np.testing.assert_array_equal(back.variables[name], value)
        assert back.variables[name].dtype == value.dtype


def test_truncated_and_corrupt_files_name_the_problem(tmp_path: Path) -> None:
    model = Ct2Model(name="X", revision=1, variables={"w": np.ones((4, 4), np.float32)})
    path = tmp_path / "model.bin"
    write_model(model, path)
    data = path.read_bytes()
    (tmp_path / "short.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(Ct2FormatError, match=r"short\.bin: truncated"):
        read_model(tmp_path / "short.bin")
    (tmp_path / "version.bin").write_bytes(struct.pack("<I", 99) + data[4:])
    with pytest.raises(Ct2FormatError, match="binary version 99"):
        read_model(tmp_path / "version.bin")
    (tmp_path / "noise.bin").write_bytes(b"\x06\x00\x00\x00" + bytes(range(256)) * 4)
    with pytest.raises(Ct2FormatError):
        read_model(tmp_path / "noise.bin")
