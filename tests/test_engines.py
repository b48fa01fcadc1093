"""Backends compute the same thing: CTranslate2 (float32, int8) against the PyTorch reference, with the
shipped model on real clips of every corpus; stale exports are rebuilt; unsupported settings are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from realdata import real_windows

from edge_ser.backends import ct2_backend
from edge_ser.checkpoint import read_meta
from engines.ct2 import export_problem

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "default"
pytestmark = pytest.mark.skipif(not (MODEL / "model.json").is_file(), reason="no trained model in models/default")


@pytest.fixture(scope="module")
def reference() -> tuple[list[np.ndarray], list[np.ndarray]]:
    from edge_ser.backends.torch_backend import TorchEngine

    mels = real_windows()
    engine = TorchEngine(MODEL)
    return mels, [s.clip_probs() for s in engine.infer(mels)]


@pytest.mark.parametrize(("compute_type", "max_diff", "min_agreement"), [("float32", 1e-4, 1.0), ("int8", 0.25, 0.97)])
def test_ctranslate2_matches_torch(reference, compute_type: str, max_diff: float, min_agreement: float) -> None:
    from edge_ser.backends.ct2_backend import Ct2Engine

    mels, torch_probs = reference
    probs = [s.clip_probs() for s in Ct2Engine(MODEL, compute_type=compute_type).infer(mels)]
    diffs = [float(np.abs(a - b).max()) for a, b in zip(probs, torch_probs, strict=True)]
    kl = [float(np.sum(b * np.log((b + 1e-9) / (a + 1e-9)))) for a, b in zip(probs, torch_probs, strict=True)]
    idx = [0, 1, 2, 3]  # the 4-class decision: argmax over neutral, happy, sad, angry
    agree = np.mean([np.argmax(a[idx]) == np.argmax(b[idx]) for a, b in zip(probs, torch_probs, strict=True)])
    print(f"{compute_type}: {len(mels)} windows, max |dp| {max(diffs):.2e}, mean KL {np.mean(kl):.2e}, "
          f"4-class agreement {agree:.3f}")
    assert max(diffs) < max_diff
    assert agree >= min_agreement


def test_a_stale_export_is_rebuilt_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.ct2 import ensure_ct2_export

    monkeypatch.setenv("EDGE_SER_CACHE", str(tmp_path))  # a fresh cache: base reassembled, export built
    first = ensure_ct2_export(MODEL)
    assert first.is_relative_to(tmp_path)
    engine_json = first / "engine.json"
    fingerprint = json.loads(engine_json.read_text())
    fingerprint["weights_sha256"] = "0" * 64  # pretend the export came from other weights
    engine_json.write_text(json.dumps(fingerprint))
    rebuilt = ensure_ct2_export(MODEL)
    assert json.loads((rebuilt / "engine.json").read_text())["weights_sha256"] != "0" * 64


def test_processes_exporting_the_same_model_at_once_all_get_a_sound_export(tmp_path: Path) -> None:
    """Two agents (or sweep workers) starting together on an empty cache used to share one temporary
    folder, and one of them failed; each writer now builds in a folder of its own and the first one wins."""
    env = {**os.environ, "EDGE_SER_CACHE": str(tmp_path)}
    code = ("import sys; from engines.ct2 import ensure_ct2_export; "
            "print(ensure_ct2_export(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", "from edge_ser.whisper_base import resolve_base; resolve_base()"],
                   env=env, cwd=ROOT, check=True, timeout=300)  # the base once, so the exports start together
    procs = [subprocess.Popen([sys.executable, "-c", code, str(MODEL)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in results]
    folders = {out.strip() for out, _ in results}
    assert len(folders) == 1
    meta = read_meta(MODEL)
    assert export_problem(Path(folders.pop()), meta, None) is None
    assert [p.name for p in (tmp_path / "ct2").iterdir()] == [f"{meta.model_id}-{meta.weights_sha256[:16]}"]


def test_unsupported_compute_type_is_named() -> None:
    from edge_ser.backends.ct2_backend import Ct2Engine

    with pytest.raises(RuntimeError, match=r"compute type 'float16' is not supported on 'cpu'"):
        Ct2Engine(MODEL, compute_type="float16")


def test_a_damaged_export_is_rebuilt_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from engines.ct2 import ensure_ct2_export

    monkeypatch.setenv("EDGE_SER_CACHE", str(tmp_path))
    export = ensure_ct2_export(MODEL)
    model_bin = export / "model.bin"
    data = bytearray(model_bin.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle of the weights
    model_bin.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        rebuilt = ensure_ct2_export(MODEL)
    assert rebuilt == export and model_bin.read_bytes() != bytes(data)
    assert "model.bin: sha256" in caplog.text and "damaged" in caplog.text


def test_an_export_built_for_another_model_is_refused_with_the_mismatch(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from edge_ser.backends.ct2_backend import Ct2Engine
    from engines.ct2 import ExportMismatchError, ensure_ct2_export

    monkeypatch.setenv("EDGE_SER_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "other-export"
    shutil.copytree(ensure_ct2_export(MODEL), other)
    engine_json = other / "engine.json"
    fingerprint = json.loads(engine_json.read_text())
    fingerprint["weights_sha256"] = "ab" * 32  # built from other weights
    engine_json.write_text(json.dumps(fingerprint))
    with pytest.raises(ExportMismatchError, match=r"other-export/engine\.json: weights_sha256 is 'abab"):
        Ct2Engine(MODEL, export_dir=other)
    (other / "engine.json").unlink()
    with pytest.raises(ExportMismatchError, match=r"engine\.json not found"):
        Ct2Engine(MODEL, export_dir=other)


def test_an_unsupported_compute_type_falls_back_only_when_configured(caplog: pytest.LogCaptureFixture) -> None:
    from edge_ser.backends.ct2_backend import Ct2Engine

    with caplog.at_level("WARNING"):
        engine = Ct2Engine(MODEL, compute_type="float16", fallback_compute_type="int8")
    assert engine.compute_type == "int8" and "using the configured fallback 'int8'" in caplog.text
    assert len(engine.infer([np.zeros((80, 200), np.float32)])) == 1


def test_cpu_isa_setting_forces_or_leaves_ctranslate2s_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {k: v for k, v in ct2_backend.os.environ.items() if k != "CT2_FORCE_CPU_ISA"}
    monkeypatch.setattr(ct2_backend.os, "environ", environ)  # a private copy: nothing leaks to later tests
    monkeypatch.setattr(ct2_backend, "cpu_flags", lambda: {"avx2", *ct2_backend.AVX512_FLAGS})
    assert ct2_backend.choose_cpu_isa("auto") == "AVX512"
    del environ["CT2_FORCE_CPU_ISA"]
    monkeypatch.setattr(ct2_backend, "cpu_flags", lambda: {"avx2", "avx512f"})  # AVX-512 without BW/DQ/VL
    assert ct2_backend.choose_cpu_isa("auto") is None and "CT2_FORCE_CPU_ISA" not in ct2_backend.os.environ
    assert ct2_backend.choose_cpu_isa("ctranslate2") is None
    assert ct2_backend.choose_cpu_isa("AVX2") == "AVX2" and ct2_backend.os.environ["CT2_FORCE_CPU_ISA"] == "AVX2"
    assert ct2_backend.choose_cpu_isa("auto") == "AVX2"  # set before (by the operator): it wins


_PROBS_WITH_ISA = """
import sys
import numpy as np
sys.path.insert(0, "tests")
from realdata import real_windows
from edge_ser.backends.ct2_backend import Ct2Engine
engine = Ct2Engine("models/default", compute_type="int8", cpu_isa=sys.argv[1])
np.save(sys.argv[2], np.stack([s.clip_probs() for s in engine.infer(real_windows())]))
"""


@pytest.mark.skipif(not set(ct2_backend.AVX512_FLAGS) <= ct2_backend.cpu_flags(), reason="the CPU has no AVX-512")
def test_avx512_kernels_compute_what_ctranslate2s_own_choice_computes(tmp_path: Path) -> None:
    """CTranslate2 reads its ISA once per process: each setting runs in its own process."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "CT2_FORCE_CPU_ISA"}
    probs = {}
    for isa in ("AVX512", "ctranslate2"):
        subprocess.run([sys.executable, "-c", _PROBS_WITH_ISA, isa, str(tmp_path / f"{isa}.npy")], cwd=ROOT,
                       env=env, check=True)
        probs[isa] = np.load(tmp_path / f"{isa}.npy")
    idx = [0, 1, 2, 3]
    agree = np.mean(probs["AVX512"][:, idx].argmax(1) == probs["ctranslate2"][:, idx].argmax(1))
    diff = float(np.abs(probs["AVX512"] - probs["ctranslate2"]).max())
    print(f"AVX512 vs CTranslate2's choice, int8: max |dp| {diff:.2e}, 4-class agreement {agree:.3f}")
    assert diff < 0.05 and agree >= 0.97


def test_stream_offsets_centre_the_same_way_in_ctranslate2_and_torch(reference) -> None:
    """Both backends measure the same window feature means and apply the same offset; a zero offset is no
    offset, and the model's own reference as offset moves the scores."""
    from edge_ser.backends.ct2_backend import Ct2Engine
    from edge_ser.backends.torch_backend import TorchEngine

    mels, torch_probs = reference
    torch_engine, ct2_engine = TorchEngine(MODEL), Ct2Engine(MODEL, compute_type="float32")
    assert torch_engine.centring_reference is not None  # the shipped model carries its reference
    plain_t, plain_c = torch_engine.infer(mels), ct2_engine.infer(mels)
    for a, b in zip(plain_t, plain_c, strict=True):
        assert a.feature_mean is not None and b.feature_mean is not None
        np.testing.assert_allclose(a.feature_mean, b.feature_mean, atol=2e-3)
    zero = [np.zeros(512, np.float32)] * len(mels)
    np.testing.assert_allclose(np.stack([s.clip_probs() for s in torch_engine.infer(mels, zero)]),
                               np.stack(torch_probs), atol=1e-6)
    # centre every window on its own mean: both backends agree, and the scores move
    offsets = [s.feature_mean - torch_engine.centring_reference for s in plain_t]
    moved_t = np.stack([s.clip_probs() for s in torch_engine.infer(mels, offsets)])
    moved_c = np.stack([s.clip_probs() for s in ct2_engine.infer(mels, offsets)])
    assert np.abs(moved_t - moved_c).max() < 1e-3
    assert np.abs(moved_t - np.stack(torch_probs)).max() > 0.05
    # the feature mean is measured before the offset: it does not move with it
    np.testing.assert_allclose(torch_engine.infer(mels[:2], offsets[:2])[0].feature_mean, plain_t[0].feature_mean,
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"window 0: offset must be finite with shape \(512,\)"):
        ct2_engine.infer(mels[:1], [np.zeros(3, np.float32)])
