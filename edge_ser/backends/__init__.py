"""Inference backends behind one ``Engine`` interface, chosen by ``engine.type`` and imported lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_ser.backends.base import Engine, FrameScores, softmax
from edge_ser.prosody import load_prosody


class Ct2EngineConfig(BaseModel):
    """CTranslate2: the exported encoder (int8 on a CPU is the fast default) + the head in numpy."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["ctranslate2"] = Field("ctranslate2", description="Backend key.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where the encoder runs.")
    compute_type: Literal["int8", "int8_float32", "int8_float16", "float16", "float32"] = Field(
        "int8", description="CTranslate2 compute type; float16/int8_float16 need CUDA."
    )
    fallback_compute_type: Literal["int8", "int8_float32", "float32"] | None = Field(
        None, description="Used, with a warning, when compute_type is not supported on this device (e.g. float16 "
                          "on a CPU); None: refuse to start instead."
    )
    export_dir: Path | None = Field(None, description="A prebuilt export (python -m engines.ct2); it must have been "
                                                      "built from this model. None: built and cached on first use.")
    inter_threads: int = Field(0, ge=0, le=64, description="Batches encoded in parallel, each by its own "
                                                           "replica (0: one per CPU core on a CPU, 1 on CUDA).")
    intra_threads: int = Field(0, ge=0, le=256, description="Threads per batch (0: the cores divided among the "
                                                            "parallel batches).")
    cpu_isa: Literal["auto", "ctranslate2", "AVX512", "AVX2", "AVX", "GENERIC"] = Field(
        "auto", description="Instruction set of CTranslate2's own CPU kernels (process-wide, read once). auto: "
        "AVX512 where the CPU has it (CTranslate2 itself picks it on Intel only; measured faster on AMD Zen 4, "
        "docs/benchmarks.md), else CTranslate2's choice; ctranslate2: always CTranslate2's choice. "
        "$CT2_FORCE_CPU_ISA, when set, wins.")


class TorchEngineConfig(BaseModel):
    """PyTorch reference backend (needs the [torch] extra)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["torch"] = Field("torch", description="Backend key.")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="torch device: cpu, cuda or cuda:N.")
    threads: int = Field(0, ge=0, le=256, description="torch.set_num_threads (0: leave torch's default).")


class TrtEngineConfig(BaseModel):
    """TensorRT through torch-tensorrt (NVIDIA GPU; the [gpu] extra). Not yet run on a GPU: see trt_backend."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["tensorrt"] = Field("tensorrt", description="Backend key.")
    precision: Literal["float16", "float32"] = Field("float16", description="TensorRT precision.")
    max_batch: int = Field(32, ge=1, le=256, description="Largest batch the engine is compiled for.")
    max_window_s: float = Field(8.0, gt=0.2, le=30.0, description="Longest window the engine is compiled for.")


EngineConfig = Annotated[Ct2EngineConfig | TorchEngineConfig | TrtEngineConfig, Field(discriminator="type")]


def make_engine(config: Ct2EngineConfig | TorchEngineConfig | TrtEngineConfig, model_dir: str | Path,
                base_dir: str | Path | None = None, prosody: bool = False, stats: bool = False) -> Engine:
    """Build the configured backend; its module (and native library) is imported only now. With ``prosody``
    the model's prosody classifier, if it has one, is attached as ``engine.prosody`` (openSMILE needed); the
    caller adds its term (the agent's batcher, ``edge_ser.batching``). With ``stats`` the engine adds the
    model's window-statistics term, if it has one (``edge_ser.window_stats``); without, it scores the head
    alone, as the agent does by default."""
    engine = _backend(config, model_dir, base_dir, stats)
    engine.prosody = load_prosody(model_dir) if prosody else None
    return engine


def _backend(config: Ct2EngineConfig | TorchEngineConfig | TrtEngineConfig, model_dir: str | Path,
             base_dir: str | Path | None, stats: bool) -> Engine:
    if isinstance(config, TrtEngineConfig):
        from edge_ser.backends.trt_backend import TrtEngine

        return TrtEngine(model_dir, base_dir, precision=config.precision, max_batch=config.max_batch,
                         max_window_s=config.max_window_s, window_stats=stats)
    if isinstance(config, Ct2EngineConfig):
        from edge_ser.backends.ct2_backend import Ct2Engine

        return Ct2Engine(model_dir, base_dir, device=config.device, compute_type=config.compute_type,
                         inter_threads=config.inter_threads, intra_threads=config.intra_threads,
                         export_dir=config.export_dir, fallback_compute_type=config.fallback_compute_type,
                         cpu_isa=config.cpu_isa, window_stats=stats)
    from edge_ser.backends.torch_backend import TorchEngine

    return TorchEngine(model_dir, base_dir, device=config.device, threads=config.threads or None, window_stats=stats)


__all__ = ["Ct2EngineConfig", "Engine", "EngineConfig", "FrameScores", "TorchEngineConfig", "TrtEngineConfig",
           "make_engine", "softmax"]
