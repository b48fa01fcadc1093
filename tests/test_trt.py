"""TensorRT backend: refused with a clear message where it cannot run; on an NVIDIA GPU with torch-tensorrt,
parity with the PyTorch reference on real clips and a cached engine that is reused, or rebuilt when stale."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from realdata import real_windows

from edge_ser.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "default"


def _gpu_ready() -> str | None:
    """None when TensorRT can run here, else the reason it cannot."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (TensorRT needs an NVIDIA GPU; CI and this machine have none)"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch-tensorrt is not installed (pip install 'edge-ser[gpu]')"
    return None


def test_tensorrt_config_is_accepted_and_checked() -> None:
    config = parse_config({"engine": {"type": "tensorrt", "precision": "float16", "max_batch": 16},
                           "sources": [{"type": "stdin", "id": "s"}]})
    assert config.engine.type == "tensorrt" and config.engine.max_batch == 16
    with pytest.raises(ValueError, match="precision"):
        parse_config({"engine": {"type": "tensorrt", "precision": "int4"}, "sources": [{"type": "stdin", "id": "s"}]})


def test_tensorrt_without_a_gpu_or_the_extra_is_refused_with_what_to_do() -> None:
    reason = _gpu_ready()
    if reason is None:
        pytest.skip("TensorRT can run here: the refusal path does not apply")
    from edge_ser.backends import TrtEngineConfig, make_engine

    with pytest.raises(RuntimeError, match=r"engine.type 'tensorrt' needs") as info:
        make_engine(TrtEngineConfig(), MODEL)
    print(f"refused as expected ({reason}): {info.value}")


@pytest.fixture(scope="module")
def gpu() -> None:
    reason = _gpu_ready()
    if reason is not None:
        print(f"TensorRT tests skipped: {reason}")
        pytest.skip(reason)


def test_tensorrt_float16_matches_torch_and_its_cache_is_reused_or_rebuilt(gpu: None, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_ser.backends.torch_backend import TorchEngine
    from edge_ser.backends.trt_backend import TrtEngine

    monkeypatch.setenv("EDGE_SER_CACHE", str(tmp_path))
    mels = real_windows()
    reference = [s.clip_probs() for s in TorchEngine(MODEL, device="cuda").infer(mels)]
    engine = TrtEngine(MODEL, precision="float16", max_batch=16)
    probs = [s.clip_probs() for s in engine.infer(mels)]
    diffs = [float(np.abs(a - b).max()) for a, b in zip(probs, reference, strict=True)]
    agree = np.mean([np.argmax(a[:4]) == np.argmax(b[:4]) for a, b in zip(probs, reference, strict=True)])
    print(f"tensorrt float16: {len(mels)} windows, max |dp| {max(diffs):.2e}, 4-class agreement {agree:.3f}")
    assert agree >= 0.99 and max(diffs) < 0.05

    sidecar = next((tmp_path / "trt").glob("*.json"))
    assert TrtEngine(MODEL, precision="float16", max_batch=16).infer(mels[:1])  # reused: no recompilation
    found = json.loads(sidecar.read_text())
    found["tensorrt"] = "0.0"  # as if built by another TensorRT
    sidecar.write_text(json.dumps(found))
    TrtEngine(MODEL, precision="float16", max_batch=16)
    assert json.loads(sidecar.read_text())["tensorrt"] != "0.0"
