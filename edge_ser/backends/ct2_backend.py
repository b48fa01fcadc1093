"""The CTranslate2 backend: the exported (truncated, exact) Whisper encoder in CTranslate2 + the numpy head.
A head reading several encoder blocks side by side gets one exported encoder per block (engines/ct2.py).

Compute types: int8 / int8_float32 / float32 on the CPU, float16 / int8_float16 on CUDA. The export is
built on first use from the checkpoint and cached by the checkpoint's hash (engines/ct2.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_ser.backends.base import Engine, FrameScores, check_offsets, group_by_length
from edge_ser.backends.numpy_head import NumpyHead
from edge_ser.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a systemd CPUAffinity= or a container limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_plan(device: str, inter_threads: int, intra_threads: int) -> tuple[int, int]:
    """(parallel batches, threads per batch). On a CPU the default is one single-threaded replica per core:
    measured on the 2-core box, 2 x 1 thread encoded 136-146 windows/s where 1 x 2 threads did 61-82, because
    one batch's log-mel and head (single-threaded numpy) overlap the other's encoder (docs/benchmarks.md)."""
    if device != "cpu":
        return max(1, inter_threads), intra_threads
    cores = cpu_cores()
    inter = inter_threads or cores
    return inter, intra_threads or max(1, cores // inter)


AVX512_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def choose_cpu_isa(setting: str) -> str | None:
    """Set ``$CT2_FORCE_CPU_ISA`` for ``setting`` (see ``Ct2EngineConfig.cpu_isa``) unless the operator set it;
    returns the ISA forced, or None when CTranslate2 chooses. CTranslate2 reads the variable once per process,
    when its first model is loaded, so this must run before that."""
    if forced := os.environ.get("CT2_FORCE_CPU_ISA"):
        return forced
    if setting == "ctranslate2":
        return None
    if setting == "auto":
        if not set(AVX512_FLAGS) <= cpu_flags():
            return None
        setting = "AVX512"
    os.environ["CT2_FORCE_CPU_ISA"] = setting
    return setting


class Ct2Engine(Engine):
    """Encoder in CTranslate2, head in numpy; ``concurrency`` batches may be encoded at once (one replica
    each). ``inter_threads`` / ``intra_threads`` 0: see :func:`thread_plan`."""

    def __init__(self, model_dir: str | Path, base_dir: str | Path | None = None, device: str = "cpu",
                 compute_type: str = "int8", intra_threads: int = 0, export_dir: str | Path | None = None,
                 inter_threads: int = 0, fallback_compute_type: str | None = None, cpu_isa: str = "auto",
                 window_stats: bool = True) -> None:
        import ctranslate2

        from engines.ct2 import check_export, ensure_ct2_export, export_folders

        meta, tensors = load_checkpoint(model_dir)
        supported = ctranslate2.get_supported_compute_types(device)
        if compute_type not in supported:
            problem = (f"ctranslate2 backend: compute type {compute_type!r} is not supported on {device!r} "
                       f"(supported here: {sorted(supported)})")
            if fallback_compute_type is None or fallback_compute_type not in supported:
                raise RuntimeError(problem + ("" if fallback_compute_type is None else
                                              f"; nor is the fallback {fallback_compute_type!r}"))
            log.warning("%s; using the configured fallback %r", problem, fallback_compute_type)
            compute_type = fallback_compute_type
        self.compute_type = compute_type
        folder = check_export(export_dir, meta) if export_dir else ensure_ct2_export(model_dir, base_dir)
        self._ct2 = ctranslate2
        inter, intra = thread_plan(device, inter_threads, intra_threads)
        self.cpu_isa = choose_cpu_isa(cpu_isa) if device == "cpu" else None
        # one encoder per block the head reads side by side (layer_join: concat); usually one
        self.encoders = [ctranslate2.models.Whisper(str(part), device=device, compute_type=compute_type,
                                                    inter_threads=inter, intra_threads=intra)
                         for part in export_folders(folder, meta)]
        self.concurrency = inter
        self.head = NumpyHead(meta, tensors, window_stats)  # False: the agent's model.stats default
        self.meta = meta
        self.labels = tuple(meta.labels)
        self.model_id = meta.model_id
        log.info("ctranslate2 engine: model %s from %s, %s on %s (ISA %s), %d parallel batch(es) x %s thread(s)",
                 meta.model_id, folder, compute_type, device, self.cpu_isa or "ctranslate2's choice", inter,
                 intra or "default")

    def infer(self, mels: Sequence[np.ndarray], offsets: Sequence[np.ndarray | None] | None = None
              ) -> list[FrameScores]:
        shifts = check_offsets(offsets, len(mels), len(self.head.gamma))
        results: dict[int, FrameScores] = {}
        for indices in group_by_length(mels).values():
            batch = np.ascontiguousarray(np.stack([mels[i] for i in indices]), dtype=np.float32)
            storage = self._ct2.StorageView.from_array(batch)
            outputs = [np.asarray(encoder.encode(storage, to_cpu=True), dtype=np.float32) for encoder in self.encoders]
            features = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
            for row, index in enumerate(indices):
                results[index] = self.head(features[row], shifts[index])
        return [results[i] for i in range(len(mels))]
