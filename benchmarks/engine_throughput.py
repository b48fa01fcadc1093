"""Engine throughput against the hardware limit measured in the same run.

For each backend x compute type (CTranslate2 int8 / int8_float32 / float32 and PyTorch float32 on the CPU;
on CUDA, when present, PyTorch float32 / float16 / bfloat16 and CTranslate2 float16 / int8_float16 if they
load) x window length (1, 2, 4, 8 s) x batch (1 ... 64), it times one engine call on a batch of real
log-mel windows (the bundled example; log-mel itself is not timed) and reports the median time per batch,
the real-time factor (compute / audio), windows per second and peak memory: the process's peak RSS
(``VmHWM``, reset before each setting) on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

Each backend x compute type runs in its own subprocess, so its memory figure holds only that engine. The same
run measures the limit, before every case and after the last (the median counts): a large GEMM's achieved
GFLOP/s in the matching precision (float32: numpy sgemm and torch.matmul, the faster counts; int8 on the CPU:
``torch._int_mm``, int8 x int8 -> int32, since CTranslate2 has no Python GEMM API; else numpy's
int32-accumulating matmul; CUDA: torch.matmul in the dtype). The FLOPs of one window are counted analytically
(conv1, conv2, per layer qkv / attention / out / ffn, the head; elementwise work such as LayerNorm, GELU and
softmax is not counted), so the table shows which
fraction of the measured limit each engine reaches.

    python benchmarks/engine_throughput.py            # the full grid (minutes)
    python benchmarks/engine_throughput.py --quick    # 1 and 2 s windows, batches 1 and 8, small GEMMs
    python benchmarks/engine_throughput.py --cases ctranslate2:int8:cpu --windows 2 --json out.json
    # CTranslate2's ISA side by side: auto (AVX512 where present) vs CTranslate2's own choice
    python benchmarks/engine_throughput.py --cases ctranslate2:int8:cpu,ctranslate2:int8:cpu:ctranslate2 --windows 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WINDOWS_S = (1.0, 2.0, 4.0, 8.0)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
# whisper-base's encoder geometry (the shipped model's base; checked against model.json at start).
N_MELS, D_MODEL, D_FFN = 80, 512, 2048
CPU_CASES = ("ctranslate2:int8:cpu", "ctranslate2:int8:cpu:ctranslate2", "ctranslate2:int8_float32:cpu",
             "ctranslate2:float32:cpu", "torch:float32:cpu")
CPU_ISAS = ("auto", "ctranslate2", "AVX512", "AVX2", "AVX", "GENERIC")
CUDA_CASES = ("torch:float32:cuda", "torch:float16:cuda", "torch:bfloat16:cuda", "ctranslate2:float16:cuda",
              "ctranslate2:int8_float16:cuda")
# Which measured GEMM limit each compute type is compared with.
LIMIT_OF = {"int8": "int8", "int8_float32": "int8", "int8_float16": "int8", "float32": "float32",
            "float16": "float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True, slots=True)
class Case:
    """One engine setting: ``backend:compute_type:device[:isa]`` (``+compile`` on the compute type:
    torch.compile; ``isa``, CTranslate2 on the CPU only: its ``cpu_isa`` setting, default auto)."""

    backend: str
    compute_type: str
    device: str
    compile: bool = False
    isa: str = "auto"

    @classmethod
    def parse(cls, text: str) -> Case:
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[0] not in ("ctranslate2", "torch") or parts[2] not in ("cpu", "cuda"):
            raise ValueError(f"case {text!r}: expected backend:compute_type:device[:isa] with backend "
                             "ctranslate2|torch and device cpu|cuda, e.g. ctranslate2:int8:cpu")
        compute, _, suffix = parts[1].partition("+")
        if suffix not in ("", "compile") or (suffix and parts[0] != "torch"):
            raise ValueError(f"case {text!r}: only torch cases take the '+compile' suffix")
        isa = parts[3] if len(parts) == 4 else "auto"
        if (isa != "auto" and (parts[0], parts[2]) != ("ctranslate2", "cpu")) or isa not in CPU_ISAS:
            raise ValueError(f"case {text!r}: an ISA ({', '.join(CPU_ISAS)}) is a CTranslate2 CPU setting only")
        return cls(parts[0], compute, parts[2], bool(suffix), isa)

    @property
    def key(self) -> str:
        isa = "" if self.isa == "auto" else f":{self.isa}"
        return f"{self.backend}:{self.compute_type}{'+compile' if self.compile else ''}:{self.device}{isa}"


# ---------------------------------------------------------------------------------------------- FLOPs


def window_flops(window_s: float, n_layers: int, head_hidden: int, n_classes: int,
                 attentive: bool) -> dict[str, float]:
    """Multiply-adds x 2 of one window through the truncated encoder and the head, by part."""
    mel = int(window_s * 100) // 2 * 2
    frames = mel // 2
    parts = {
        "conv1": 2.0 * mel * (N_MELS * 3) * D_MODEL,
        "conv2": 2.0 * frames * (D_MODEL * 3) * D_MODEL,
        "qkv": n_layers * 2.0 * frames * D_MODEL * 3 * D_MODEL,
        "attention": n_layers * 2.0 * 2.0 * frames * frames * D_MODEL,  # Q K^T and A V
        "out": n_layers * 2.0 * frames * D_MODEL * D_MODEL,
        "ffn": n_layers * 2.0 * 2.0 * frames * D_MODEL * D_FFN,
        "head": 2.0 * frames * (D_MODEL * head_hidden + head_hidden * n_classes + (head_hidden if attentive else 0)),
    }
    parts["total"] = sum(parts.values())
    return parts


# ------------------------------------------------------------------------------------------ machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")) -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)


def training_processes() -> list[str]:
    """Command lines of trainer jobs running on this machine (they would skew the figures; stopped ones do not)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t") and any(f"trainer.{name}" in cmd for name in ("loco", "train", "baselines")):
            found.append(f"pid {proc.name}: {cmd[:120]}")
    return found


def machine_facts() -> dict[str, Any]:
    import ctranslate2

    facts: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_flags": cpu_flags(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ctranslate2": ctranslate2.__version__,
        "ct2_cuda_devices": ctranslate2.get_cuda_device_count(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "training_jobs": training_processes(),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
            facts["cuda"] = torch.version.cuda
    except ModuleNotFoundError:
        facts["torch"] = "not installed"
    return facts


# ---------------------------------------------------------------------------------------------- limits


def _median_time(fn: Callable[[], object], reps: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_limits(devices: Sequence[str], quick: bool) -> dict[str, dict[str, Any]]:
    """Achieved GFLOP/s of a large square GEMM per precision; each entry names how it was measured."""
    limits: dict[str, dict[str, Any]] = {}
    reps = 3 if quick else 5
    n = 1024 if quick else 2048
    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    candidates = {f"numpy sgemm {n}^3": flops / _median_time(lambda: a @ b, reps) / 1e9}
    try:
        import torch
    except ModuleNotFoundError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        candidates[f"torch.matmul float32 {n}^3 (CPU)"] = flops / _median_time(lambda: ta @ tb, reps) / 1e9
    method = max(candidates, key=lambda k: candidates[k])
    limits["float32:cpu"] = {"gflops": candidates[method], "method": method,
                             "all": {k: round(v, 1) for k, v in candidates.items()}}
    ia = rng.integers(-128, 128, (n, n), dtype=np.int8)
    ib = rng.integers(-128, 128, (n, n), dtype=np.int8)
    int_mm = getattr(torch, "_int_mm", None) if torch is not None else None
    try:
        if int_mm is None:
            raise RuntimeError("torch._int_mm is not available")
        xa, xb = torch.from_numpy(ia), torch.from_numpy(ib)
        seconds = _median_time(lambda: int_mm(xa, xb), reps)
        limits["int8:cpu"] = {"gflops": flops / seconds / 1e9, "method": f"torch._int_mm int8->int32 {n}^3 (CPU)"}
    except RuntimeError as exc:
        m = 512  # numpy's integer matmul is not BLAS: keep it small
        ja, jb = ia[:m, :m].astype(np.int32), ib[:m, :m].astype(np.int32)
        seconds = _median_time(lambda: ja @ jb, reps)
        limits["int8:cpu"] = {"gflops": 2.0 * m**3 / seconds / 1e9,
                              "method": f"numpy int32-accumulating matmul {m}^3 (torch._int_mm: {exc})"}
    if "cuda" in devices and torch is not None and torch.cuda.is_available():
        g = 4096 if quick else 8192
        for name, dtype in (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
            x = torch.randn(g, g, device="cuda", dtype=dtype)
            y = torch.randn(g, g, device="cuda", dtype=dtype)
            seconds = _median_time(lambda x=x, y=y: x @ y, reps * 2, torch.cuda.synchronize)
            tf32 = torch.backends.cuda.matmul.allow_tf32
            note = f" (TF32 {'on' if tf32 else 'off'})" if name == "float32" else ""
            limits[f"{name}:cuda"] = {"gflops": 2.0 * g**3 / seconds / 1e9,
                                      "method": f"torch.matmul {name} {g}^3 (CUDA){note}"}
            del x, y
        xa = torch.randint(-128, 128, (g, g), dtype=torch.int8, device="cuda")
        xb = torch.randint(-128, 128, (g, g), dtype=torch.int8, device="cuda")
        seconds = _median_time(lambda: torch._int_mm(xa, xb), reps * 2, torch.cuda.synchronize)
        limits["int8:cuda"] = {"gflops": 2.0 * g**3 / seconds / 1e9, "method": f"torch._int_mm {g}^3 (CUDA)"}
    return limits


def summarize_limits(samples: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The limit of each precision = the median of its samples (taken before every case and after the last):
    the GEMM figure drifts during a run on a shared VM (one run here: 737 then 450 int8 GFLOP/s), so a
    single sample at the start would make every fraction depend on when it was taken."""
    limits: dict[str, dict[str, Any]] = {}
    for key in samples[0]:
        values = [sample[key]["gflops"] for sample in samples if key in sample]
        limits[key] = {**samples[0][key], "gflops": statistics.median(values),
                       "samples": [round(v, 1) for v in values]}
    return limits


# ---------------------------------------------------------------------------------------------- engines


def real_mels(window_s: float, count: int) -> list[np.ndarray]:
    """``count`` log-mel windows of ``window_s`` seconds cut from the bundled example (hop 0.5 s, wrapping)."""
    from edge_ser.audio import load_audio
    from edge_ser.features import log_mel

    audio = load_audio(ROOT / "examples" / "emodb_shifts.opus")
    size = int(window_s * 16000) // 320 * 320
    starts = [(i * 8000) % (len(audio) - size) for i in range(count)]
    return [log_mel(audio[s : s + size]) for s in starts]


class TorchRunner:
    """The torch backend's computation (``EmotionModel.features`` + ``head.frame_outputs``) in a given dtype."""

    def __init__(self, model_dir: Path, device: str, compute_type: str, compile_model: bool, threads: int) -> None:
        import torch

        from edge_ser.model import load_emotion_model

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = getattr(torch, compute_type)
        model, _ = load_emotion_model(model_dir)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.forward = torch.compile(self._forward) if compile_model else self._forward

    def _forward(self, x: Any) -> tuple[Any, Any]:
        feats = self.model.features(x)
        valid = self.torch.ones(feats.shape[:2], dtype=self.torch.bool, device=x.device)
        logits, weights, _ = self.model.head.frame_outputs(feats, valid)
        return logits - self.model.log_prior, weights

    def __call__(self, mels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.stack(mels)).to(self.device, self.dtype)
            logits, weights = self.forward(x)
            return logits.float().cpu().numpy(), weights.float().cpu().numpy()


def _vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> None:
    with contextlib.suppress(OSError):  # else the figure is the process's peak so far (an upper bound)
        Path("/proc/self/clear_refs").write_text("5")


def in_parallel(call: Callable[[], object], callers: int) -> None:
    """``call`` once in each of ``callers`` threads at the same time (the engine runs that many batches)."""
    if callers == 1:
        call()
        return
    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_worker(case: Case, windows: Sequence[float], batches: Sequence[int], budget_s: float, min_reps: int,
               max_reps: int, threads: int, model_dir: Path, inter: int = 0) -> None:
    """Time one case over the grid; print one ``RESULT {json}`` line per setting. CTranslate2 runs
    ``engine.concurrency`` batches at once (its default on a CPU: one single-threaded replica per core, as
    in the agent): one timed step = that many calls in parallel threads, and windows/s counts them all."""
    cuda_torch = None
    callers = 1
    if case.backend == "ctranslate2":
        from edge_ser.agent import prepare_process
        from edge_ser.backends.ct2_backend import Ct2Engine

        prepare_process()  # as the agent does
        engine = Ct2Engine(model_dir, device=case.device, compute_type=case.compute_type, intra_threads=threads,
                           inter_threads=inter, cpu_isa=case.isa)
        print(f"{case.key}: CTranslate2 ISA {engine.cpu_isa or 'its own choice'}", file=sys.stderr, flush=True)
        infer: Callable[[Sequence[np.ndarray]], object] = engine.infer
        callers = engine.concurrency
    else:
        runner = TorchRunner(model_dir, case.device, case.compute_type, case.compile, threads)
        infer = runner
        if case.device == "cuda":
            cuda_torch = runner.torch
    for window_s in windows:
        pool = real_mels(window_s, max(batches))
        for batch in batches:
            mels = pool[:batch]
            if cuda_torch is not None:
                cuda_torch.cuda.reset_peak_memory_stats()
            _reset_hwm()
            start = time.perf_counter()
            in_parallel(lambda m=mels: infer(m), callers)  # warm-up (and compilation for torch.compile)
            first = time.perf_counter() - start
            if first < 1.0:
                in_parallel(lambda m=mels: infer(m), callers)
            times: list[float] = []
            while len(times) < max_reps and (len(times) < min_reps or sum(times) < budget_s):
                start = time.perf_counter()
                in_parallel(lambda m=mels: infer(m), callers)  # host numpy results: complete (CUDA synced)
                times.append(time.perf_counter() - start)
            if cuda_torch is not None:
                memory, memory_kind = cuda_torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
            else:
                memory, memory_kind = _vm_hwm_mib(), "peak_rss"
            median = statistics.median(times)
            print("RESULT " + json.dumps({
                "case": case.key, "window_s": window_s, "batch": batch, "median_s": median, "reps": len(times),
                "min_s": min(times), "rtf": median / (batch * callers * window_s), "parallel": callers,
                "windows_per_s": batch * callers / median,
                "memory_mib": memory, "memory_kind": memory_kind,
            }), flush=True)


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def limit_for(case_key: str, limits: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    case = Case.parse(case_key)
    return limits.get(f"{LIMIT_OF.get(case.compute_type, case.compute_type)}:{case.device}")


def render(facts: dict[str, Any], limits: dict[str, dict[str, Any]], flops: dict[float, dict[str, float]],
           rows: list[dict[str, Any]], errors: dict[str, str], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Machine: {facts['cpu']}; {facts['usable_cpus']} usable of {facts['logical_cpus']} logical CPUs "
             f"({facts['cpu_flags']}); {facts['memory_gib']} GiB" + (f"; GPU {facts['gpu']} (CUDA {facts['cuda']})"
                                                                      if "gpu" in facts else ""),
             f"Versions: Python {facts['python']}, numpy {facts['numpy']}, ctranslate2 {facts['ctranslate2']}, "
             f"torch {facts.get('torch')} ({facts.get('torch_threads', '-')} threads); {facts['date']}",
             f"Load average at start: {facts['load_average']}; training jobs running: "
             + ("; ".join(facts["training_jobs"]) or "none"), "",
             "Measured limits (large GEMM, sampled before every engine case and after the last; the median counts):",
             "", "| precision | device | GFLOP/s (median) | samples | how |", "|---|---|---:|---|---|"]
    for key, entry in limits.items():
        precision, device = key.split(":")
        others = [f"{name}: {value}" for name, value in entry.get("all", {}).items() if name != entry["method"]]
        how = entry["method"] + (f" (the faster of; also {'; '.join(others)})" if others else "")
        samples = ", ".join(f"{v:g}" for v in entry.get("samples", []))
        lines.append(f"| {precision} | {device} | {entry['gflops']:.1f} | {samples} | {how} |")
    lines += ["", "FLOPs per window (analytic; GFLOP):", "",
              "| window s | conv1 | conv2 | qkv | attention | out | ffn | head | total |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for window_s, parts in flops.items():
        lines.append(f"| {window_s:g} | " + " | ".join(f"{parts[k] / 1e9:.3f}" for k in
                                                       ("conv1", "conv2", "qkv", "attention", "out", "ffn", "head",
                                                        "total")) + " |")
    for key, message in errors.items():
        lines.append(f"\n{key}: not measured: {message}")
    header = ("| engine | window s | batch (x parallel) | ms / step | RTF | windows / s | GFLOP/s | % of limit "
              "| peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row_text(r: dict[str, Any]) -> str:
        achieved = flops[r["window_s"]]["total"] * r["windows_per_s"] / 1e9
        batch = f"{r['batch']} x {r['parallel']}" if r.get("parallel", 1) > 1 else str(r["batch"])
        limit = limit_for(r["case"], limits)
        share = 100 * achieved / limit["gflops"] if limit else float("nan")
        memory = "-" if r["memory_mib"] is None else f"{r['memory_mib']:.0f}"
        return (f"| {r['case']} | {r['window_s']:g} | {batch} | {r['median_s'] * 1000:.2f} | {r['rtf']:.5f} | "
                f"{r['windows_per_s']:.1f} | {achieved:.1f} | {_fmt(share)} | {memory} |")

    best: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
        slot = (r["case"], r["window_s"])
        if slot not in best or r["windows_per_s"] > best[slot]["windows_per_s"]:
            best[slot] = r
    lines += ["", "Best batch per engine and window (highest windows / s):", "", *header]
    lines += [row_text(r) for r in best.values()]
    lines += ["", "All settings:", "", *header, *(row_text(r) for r in rows)]
    target = best.get(("ctranslate2:int8:cpu", 2.0))
    if target and "int8:cpu" in limits:
        achieved = flops[2.0]["total"] * target["windows_per_s"] / 1e9
        share = 100 * achieved / limits["int8:cpu"]["gflops"]
        verdict = "met" if share >= 50 else "not met"
        lines += ["", f"Target: CTranslate2 int8, 2 s windows, best batch ({target['batch']}) reaches {share:.1f}% "
                      f"of the measured int8 GEMM limit (target >= 50%): {verdict}; "
                      f"{100 * achieved / max(limits['int8:cpu']['samples']):.1f}% of the highest sample."]
    return "\n".join(lines)


def default_cases() -> list[str]:
    cases = list(CPU_CASES)
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ModuleNotFoundError:
        cuda = False
    return cases + list(CUDA_CASES) if cuda else cases


def run_case(case: Case, args: argparse.Namespace, windows: Sequence[float], batches: Sequence[int]
             ) -> tuple[list[dict[str, Any]], str | None]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", case.key,
               "--windows", ",".join(f"{w:g}" for w in windows), "--batches", ",".join(map(str, batches)),
               "--budget", str(args.budget), "--min-reps", str(args.min_reps), "--max-reps", str(args.max_reps),
               "--threads", str(args.threads), "--inter", str(args.inter), "--model", str(args.model)]
    print(f"... {case.key}", file=sys.stderr, flush=True)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return rows, (tail[-1] if tail else f"exit status {proc.returncode}")
    return rows, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 and 2 s windows, batches 1 and 8, small GEMMs")
    parser.add_argument("--cases", default=None,
                        help="comma-separated backend:compute_type:device (default: the CPU cases, plus the CUDA "
                             "cases when torch sees a GPU); torch cases take '+compile': torch:float16+compile:cuda")
    parser.add_argument("--windows", default=None, help="window lengths in seconds (default 1,2,4,8)")
    parser.add_argument("--batches", default=None, help="batch sizes (default 1,2,4,8,16,32,64)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed calls per setting (default 3)")
    parser.add_argument("--min-reps", type=int, default=3, help="timed calls per setting at least")
    parser.add_argument("--max-reps", type=int, default=20, help="timed calls per setting at most")
    parser.add_argument("--threads", type=int, default=0, help="engine threads per batch (0: the engine's default)")
    parser.add_argument("--inter", type=int, default=0,
                        help="CTranslate2 batches in parallel (0: the engine's default, one per core on a CPU)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default", help="checkpoint folder")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    windows = [float(w) for w in args.windows.split(",")] if args.windows else \
        ([1.0, 2.0] if args.quick else list(WINDOWS_S))
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 8] if args.quick else list(BATCHES))
    if args.budget is None:
        args.budget = 1.0 if args.quick else 3.0
    if args.worker:
        run_worker(Case.parse(args.worker), windows, batches, args.budget, args.min_reps, args.max_reps,
                   args.threads, args.model, args.inter)
        return 0

    from edge_ser.checkpoint import load_checkpoint

    meta, _ = load_checkpoint(args.model)
    if meta.base.get("name") != "whisper-base":
        raise SystemExit(f"{args.model}: base {meta.base.get('name')!r}; this benchmark counts whisper-base FLOPs")
    cases = [Case.parse(c) for c in (args.cases.split(",") if args.cases else default_cases())]
    facts = machine_facts()
    if facts["training_jobs"]:
        print("warning: training jobs are running; figures will be low: " + "; ".join(facts["training_jobs"]),
              file=sys.stderr)
    devices = sorted({c.device for c in cases})
    limit_samples = [gemm_limits(devices, args.quick)]
    flops = {w: window_flops(w, meta.encoder_layers, int(meta.head.get("hidden", 256)), len(meta.labels),
                             meta.head.get("type") == "attentive") for w in windows}
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for number, case in enumerate(cases):
        if number:
            limit_samples.append(gemm_limits(devices, args.quick))
        got, error = run_case(case, args, windows, batches)
        rows += got
        if error:
            errors[case.key] = error
    limit_samples.append(gemm_limits(devices, args.quick))
    limits = summarize_limits(limit_samples)
    facts["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = "python benchmarks/engine_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(render(facts, limits, flops, rows, errors, command.strip()))
    print(f"\nLoad average at end: {facts['load_average_end']}")
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "limits": limits, "flops": {str(k): v for k, v in
                                         flops.items()}, "rows": rows, "errors": errors,
                                         "cases": [asdict(c) for c in cases]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
