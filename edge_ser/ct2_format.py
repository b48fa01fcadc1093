"""Read and write CTranslate2's ``model.bin`` (binary version >= 5) as a name -> numpy array mapping.

Layout: u32 version; model name (u16 length + bytes incl. NUL); u32 revision; u32 variable count; per
variable: name, u8 rank, u32 per dimension, u8 dtype, u32 byte count, raw bytes; then u32 alias count and
(alias, target) string pairs. Used to load whisper-base into PyTorch and to export trained encoders back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.float32),
    1: np.dtype(np.int8),
    2: np.dtype(np.int16),
    3: np.dtype(np.int32),
    4: np.dtype(np.float16),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}

LAYER_MAP: dict[str, str] = {
    "attn_norm.weight": "self_attention/layer_norm/gamma",
    "attn_norm.bias": "self_attention/layer_norm/beta",
    "qkv.weight": "self_attention/linear_0/weight",
    "qkv.bias": "self_attention/linear_0/bias",
    "out.weight": "self_attention/linear_1/weight",
    "out.bias": "self_attention/linear_1/bias",
    "ffn_norm.weight": "ffn/layer_norm/gamma",
    "ffn_norm.bias": "ffn/layer_norm/beta",
    "fc1.weight": "ffn/linear_0/weight",
    "fc1.bias": "ffn/linear_0/bias",
    "fc2.weight": "ffn/linear_1/weight",
    "fc2.bias": "ffn/linear_1/bias",
}
"""PyTorch parameter name in ``EncoderLayer`` -> CTranslate2 variable name under ``encoder/layer_<i>/``."""

_MAX_RANK = 8
_MAX_STRING = 4096


class Ct2FormatError(ValueError):
    """``model.bin`` is not a CTranslate2 model this code understands; the message names file and offset."""


@dataclass
class Ct2Model:
    """The contents of a ``model.bin``: its spec name, revision, variables and aliases."""

    name: str
    revision: int
    version: int = 6
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def _read_exact(handle: BinaryIO, size: int, path: Path) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise Ct2FormatError(f"{path}: truncated at byte {handle.tell()} (wanted {size} more bytes)")
    return data


def _read_string(handle: BinaryIO, path: Path) -> str:
    (length,) = struct.unpack("<H", _read_exact(handle, 2, path))
    if length == 0 or length > _MAX_STRING:
        raise Ct2FormatError(f"{path}: bad string length {length} at byte {handle.tell() - 2}")
    raw = _read_exact(handle, length, path)
    if raw[-1:] != b"\0":
        raise Ct2FormatError(f"{path}: string at byte {handle.tell() - length} is not NUL-terminated")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Ct2FormatError(f"{path}: string at byte {handle.tell() - length} is not UTF-8") from exc


def _write_string(handle: BinaryIO, text: str) -> None:
    data = text.encode("utf-8") + b"\0"
    handle.write(struct.pack("<H", len(data)))
    handle.write(data)


def read_model(path: str | Path, only_prefix: str | None = None) -> Ct2Model:
    """Read ``model.bin``. With ``only_prefix``, keep just the variables whose name starts with it."""
    path = Path(path)
    with path.open("rb") as handle:
        (version,) = struct.unpack("<I", _read_exact(handle, 4, path))
        if version < 5 or version > 6:
            raise Ct2FormatError(f"{path}: binary version {version}, expected 5 or 6")
        name = _read_string(handle, path)
        (revision,) = struct.unpack("<I", _read_exact(handle, 4, path))
        (count,) = struct.unpack("<I", _read_exact(handle, 4, path))
        model = Ct2Model(name=name, revision=revision, version=version)
        for _ in range(count):
            var_name = _read_string(handle, path)
            (rank,) = struct.unpack("<B", _read_exact(handle, 1, path))
            if rank > _MAX_RANK:
                raise Ct2FormatError(f"{path}: variable {var_name!r} has rank {rank}")
            shape = struct.unpack(f"<{rank}I", _read_exact(handle, 4 * rank, path)) if rank else ()
            code, nbytes = struct.unpack("<BI", _read_exact(handle, 5, path))
            if code not in _DTYPES:
                raise Ct2FormatError(f"{path}: variable {var_name!r} has unsupported dtype code {code}")
            dtype = _DTYPES[code]
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise Ct2FormatError(
                    f"{path}: variable {var_name!r} declares {nbytes} bytes, shape {shape} needs {expected}"
                )
            if only_prefix is not None and not var_name.startswith(only_prefix):
                handle.seek(nbytes, 1)
                continue
            raw = _read_exact(handle, nbytes, path)
            model.variables[var_name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        tail = handle.read(4)
        if len(tail) == 4:
            (n_alias,) = struct.unpack("<I", tail)
            for _ in range(n_alias):
                alias = _read_string(handle, path)
                model.aliases[alias] = _read_string(handle, path)
    return model


def write_model(model: Ct2Model, path: str | Path) -> None:
    """Write ``model`` as ``model.bin`` (atomically: a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(struct.pack("<I", model.version))
        _write_string(handle, model.name)
        handle.write(struct.pack("<I", model.revision))
        handle.write(struct.pack("<I", len(model.variables)))
        for name, value in model.variables.items():
            array = np.require(value, requirements="C")  # keeps 0-d scalars 0-d
            if array.dtype not in _CODES:
                raise Ct2FormatError(f"{path}: variable {name!r} has unsupported dtype {array.dtype}")
            _write_string(handle, name)
            handle.write(struct.pack("<B", array.ndim))
            if array.ndim:
                handle.write(struct.pack(f"<{array.ndim}I", *array.shape))
            handle.write(struct.pack("<BI", _CODES[array.dtype], array.nbytes))
            handle.write(array.tobytes())
        handle.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            _write_string(handle, alias)
            _write_string(handle, target)
    tmp.replace(path)
