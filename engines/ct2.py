"""Export a trained emotion model to a CTranslate2 Whisper folder whose ``encode`` is exactly the model's
encoder: Whisper's layers truncated to the ones the model reads, fine-tuned layers replaced, and the final
``encoder/layer_norm`` replaced by the model's trained norm (CTranslate2 returns the final layer's output
after that norm, so a truncated model computes the intermediate layer the emotion head was trained on).

The decoder is cut to one layer (CTranslate2's Whisper loader needs one; it is never run). The folder
carries ``engine.json`` naming the checkpoint's weights hash, the base it was cut from, the format and the
sha256 of its own ``model.bin``, so a stale or damaged export is rebuilt, never silently used, and a
prebuilt export for another model is refused.

A head that reads several blocks side by side (``layer_join: concat``, e.g. heads on blocks 2 and 3 merged by
``trainer.ensemble``) gets one such encoder per block, in ``block-<n>/`` sub-folders; the backend lays their
outputs side by side. A learned mix of blocks needs their raw outputs, which CTranslate2 does not return, and
is refused by name.

    python -m engines.ct2 --model models/default --out /tmp/ct2-default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edge_ser.checkpoint import ModelMeta, blocks_read, learns_layer_mix, load_checkpoint
from edge_ser.ct2_format import LAYER_MAP, read_model, write_model
from edge_ser.whisper_base import cache_root, resolve_base, sha256_file

log = logging.getLogger(__name__)

EXPORT_FORMAT = "edge-ser-ct2-export/1"
_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def export_fingerprint(meta: ModelMeta, base_model_bin: Path) -> dict[str, str]:
    """What an export was built from; any change means the export is stale."""
    return {
        "format": EXPORT_FORMAT,
        "model_id": meta.model_id,
        "weights_sha256": meta.weights_sha256,
        "base_size": str(base_model_bin.stat().st_size),
        "base_mtime_ns": str(base_model_bin.stat().st_mtime_ns),
    }


def export_parts(meta: ModelMeta) -> list[tuple[str, int]]:
    """The encoders an export of ``meta`` holds, as (sub-folder, number of blocks): one truncated to the block
    the head reads, in the export folder itself; or one per block read side by side, ``block-<n>``."""
    if learns_layer_mix(meta.mix_layers, meta.layer_join):
        raise ValueError(f"{meta.model_id}: the model reads a learned mix of encoder layers {meta.mix_layers}; "
                         "CTranslate2's encoder returns only its last layer, normalised, so this model runs on the "
                         "torch engine (engine.type: torch)")
    blocks = blocks_read(meta)
    return [("", blocks[0])] if len(blocks) == 1 else [(f"block-{block}", block) for block in blocks]


def _truncated(variables: dict[str, np.ndarray], blocks: int, meta: ModelMeta, tensors: dict[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    """The base model's variables cut to ``blocks`` encoder layers and one decoder layer, with the model's
    fine-tuned layers and final norm."""
    dtype = variables["encoder/conv1/weight"].dtype
    kept: dict[str, np.ndarray] = {}
    for name, value in variables.items():
        match = _LAYER.match(name)
        if match and match.group(1) == "encoder" and int(match.group(2)) >= blocks:
            continue
        if match and match.group(1) == "decoder" and int(match.group(2)) >= 1:
            continue
        kept[name] = value
    for index in (i for i in meta.finetuned_layers if i < blocks):
        for torch_name, ct2_name in LAYER_MAP.items():
            kept[f"encoder/layer_{index}/{ct2_name}"] = tensors[f"encoder.layers.{index}.{torch_name}"].astype(dtype)
    # Keep the trained norm in float32: it is tiny, and float16 would cost precision for nothing.
    kept["encoder/layer_norm/gamma"] = tensors["norm.weight"].astype(np.float32)
    kept["encoder/layer_norm/beta"] = tensors["norm.bias"].astype(np.float32)
    return kept


def export_ct2(model_dir: str | Path, out_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """Write the CTranslate2 folder for the checkpoint in ``model_dir`` into ``out_dir``."""
    meta, tensors = load_checkpoint(model_dir)
    try:
        parts = export_parts(meta)
    except ValueError as exc:
        raise ValueError(f"{model_dir}: {exc}") from None
    base = resolve_base(base_dir)
    spec = read_model(base / "model.bin")
    variables = spec.variables
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A folder of this writer's own: two processes exporting the same model at once never share one.
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    try:
        sums = {}
        for sub, blocks in parts:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            spec.variables = _truncated(variables, blocks, meta, tensors)
            write_model(spec, tmp / sub / "model.bin")
            for name in _SIDE_FILES:
                if (base / name).is_file():
                    shutil.copyfile(base / name, tmp / sub / name)
            sums[Path(sub, "model.bin").as_posix()] = sha256_file(tmp / sub / "model.bin")
        fingerprint = {**export_fingerprint(meta, base / "model.bin"),
                       "model_bin_sha256": sums["model.bin"] if list(sums) == ["model.bin"] else sums}
        (tmp / "engine.json").write_text(json.dumps(fingerprint, indent=2) + "\n")
        _install(tmp, out, meta, base / "model.bin")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (%s) to %s", meta.model_id, ", ".join(f"{b} encoder layers" for _, b in parts), out)
    return out


def export_folders(folder: Path, meta: ModelMeta) -> list[Path]:
    """The CTranslate2 model folders inside the export ``folder`` of ``meta``, in the order the head reads them."""
    return [folder / sub for sub, _ in export_parts(meta)]


def _install(tmp: Path, out: Path, meta: ModelMeta, base_model_bin: Path) -> None:
    """Rename the finished export ``tmp`` to ``out``. A sound export of the same model already there (another
    process finished first) is kept as it is; anything else there is moved aside and removed first."""
    if out.exists():
        if export_problem(out, meta, base_model_bin) is None:
            return
        stale = Path(tempfile.mkdtemp(prefix=f"{out.name}.stale-", dir=out.parent))
        with contextlib.suppress(FileNotFoundError):  # another writer moved it already
            out.rename(stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:  # another writer's export took the name in between: use it if it is sound
        problem = export_problem(out, meta, base_model_bin)
        if problem is not None:
            raise ExportMismatchError(f"CTranslate2 export {out}: {problem}") from None


class ExportMismatchError(RuntimeError):
    """An export folder belongs to another model, another base, or its model.bin is damaged."""


def export_problem(folder: Path, meta: ModelMeta, base_model_bin: Path | None) -> str | None:
    """Why ``folder`` is not a sound export of ``meta`` (None when it is): the file and the mismatch."""
    engine_json = folder / "engine.json"
    try:
        found = json.loads(engine_json.read_text())
    except FileNotFoundError:
        return f"{engine_json} not found: not an edge-ser CTranslate2 export"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{engine_json} is unreadable ({exc})"
    if not isinstance(found, dict):
        return f"{engine_json} is not a JSON object"
    wanted = export_fingerprint(meta, base_model_bin) if base_model_bin is not None else {
        "format": EXPORT_FORMAT, "model_id": meta.model_id, "weights_sha256": meta.weights_sha256}
    for key, value in wanted.items():
        if found.get(key) != value:
            return f"{engine_json}: {key} is {found.get(key)!r}, expected {value!r} for model {meta.model_id}"
    if "model_bin_sha256" not in found:
        return f"{engine_json} has no model.bin checksum (an export from before edge-ser recorded one)"
    sums = found["model_bin_sha256"]
    sums = {"model.bin": sums} if isinstance(sums, str) else sums
    try:
        wanted_bins = [Path(sub, "model.bin").as_posix() for sub, _ in export_parts(meta)]
    except ValueError as exc:
        return str(exc)
    if not isinstance(sums, dict) or sorted(sums) != sorted(wanted_bins):
        return f"{engine_json}: model_bin_sha256 names {sums!r:.120}, expected checksums of {wanted_bins}"
    for name in wanted_bins:
        model_bin = folder / name
        if not model_bin.is_file():
            return f"{model_bin} not found"
        digest = sha256_file(model_bin)
        if digest != sums[name]:
            return f"{model_bin}: sha256 {digest[:16]}... does not match engine.json: the file is damaged"
    return None


def ensure_ct2_export(model_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """The cached export for this checkpoint, rebuilt (with a warning naming why) when missing, stale or
    damaged: a cached engine that does not match is never used."""
    meta, _ = load_checkpoint(model_dir)
    base = resolve_base(base_dir)
    out = cache_root() / "ct2" / f"{meta.model_id}-{meta.weights_sha256[:16]}"
    if (out / "engine.json").is_file():
        problem = export_problem(out, meta, base / "model.bin")
        if problem is None:
            return out
        log.warning("CTranslate2 export %s rebuilt: %s", out, problem)
    return export_ct2(model_dir, out, base)


def check_export(folder: str | Path, meta: ModelMeta) -> Path:
    """An export given explicitly (``export_dir``): used only if it was built from the model ``meta``
    describes, else ``ExportMismatchError`` naming the file and the mismatch (no silent fallback)."""
    problem = export_problem(Path(folder), meta, None)
    if problem is not None:
        raise ExportMismatchError(f"CTranslate2 export {folder} cannot serve model {meta.model_id}: {problem}")
    return Path(folder)


def base_checksum(base_dir: str | Path | None = None) -> str:
    """sha256 of the base ``model.bin`` (for model cards; slow on purpose-free paths, so not in the hot path)."""
    return sha256_file(resolve_base(base_dir) / "model.bin")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (model.json + model.safetensors)")
    parser.add_argument("--out", required=True, help="output CTranslate2 folder (replaced if it exists)")
    parser.add_argument("--base", default=None, help="CTranslate2 Whisper folder (default: packaged whisper-base)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(export_ct2(args.model, args.out, args.base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
