"""The PyTorch Whisper encoder built from the CTranslate2 weights computes what CTranslate2 computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_ser.features import log_mel
from edge_ser.whisper_base import whisper_base_dir

torch = pytest.importorskip("torch")
ctranslate2 = pytest.importorskip("ctranslate2")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIPS = [DATA / "emodb" / "wav" / "08a01Wa.opus", DATA / "casia" / "liuchanhg" / "angry" / "201.opus"]


@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.parent.name + "/" + p.name)
def test_torch_encoder_matches_ctranslate2_float32(clip: Path) -> None:
    if not clip.is_file():
        pytest.skip(f"corpus clip {clip} not available")
    from edge_ser.model import load_whisper_encoder

    audio, _ = sf.read(clip, dtype="float32")
    mel = log_mel(audio[: len(audio) // 320 * 320])
    folder = whisper_base_dir()
    whisper = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    reference = np.asarray(whisper.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True))
    encoder, norm = load_whisper_encoder(folder / "model.bin", 6)
    with torch.inference_mode():
        ours = norm(encoder(torch.from_numpy(mel)[None])).numpy()
    assert ours.shape == reference.shape == (1, mel.shape[1] // 2, 512)
    scale = np.abs(reference).max()
    worst, typical = np.abs(ours - reference).max() / scale, np.abs(ours - reference).mean() / scale
    print(f"{clip.name}: max |diff| {worst:.2e}, mean |diff| {typical:.2e} of the largest activation")
    # float32 through 6 layers: the GEMM library (MKL on Intel, oneDNN on AMD) sets the rounding; measured
    # 1.1e-4 max / ~1e-7 mean on AMD EPYC, < 1e-4 on Intel Xeon. A wrong weight or op is orders above this.
    assert worst < 5e-4 and typical < 1e-5


def test_odd_frame_counts_are_refused() -> None:
    from edge_ser.model import load_whisper_encoder

    encoder, _ = load_whisper_encoder(whisper_base_dir() / "model.bin", 1)
    with pytest.raises(ValueError, match="even number of mel frames"):
        encoder(torch.zeros(1, 80, 101))
