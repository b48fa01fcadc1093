"""The C allocator of a long-running inference process: settings that make it fast and keep it flat, and
a reading of what it holds.

glibc's defaults cost the agent twice (measured on the 2-core box, docs/benchmarks.md, docs/reliability.md):

* **Speed.** CTranslate2 allocates its activations anew in every call. Above a small threshold glibc maps
  such blocks and unmaps them on free, and returns free memory at the top of a thread's heap to the kernel,
  so the next call page-faults and zero-fills the same megabytes again: a quarter of the encoder's time was
  spent in the kernel. A fixed ``mmap_threshold_mb`` and a high ``trim_threshold_mb`` keep freed blocks for
  reuse.
* **Creep.** Every thread that allocates may get its own arena (up to 8 per core) and freed blocks stay in
  partly used arenas, so RSS creeps up while the live heap does not. ``malloc_arena_max`` caps the arenas,
  and ``trim()`` (``malloc_trim(0)``, every ``trim_interval_s``) hands free pages back now and then.

``apply_at_start`` makes the settings (``mallopt``) before the worker threads exist; ``snapshot()`` reads
RSS (``/proc/self/statm``) and the heap in use / free (``mallinfo2``) for the stats topic and the Prometheus
metrics. Where the C library is not glibc nothing is changed and the heap figures are None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_MAX_MB = 32  # glibc's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
MIB = 1024 * 1024


class MemoryConfig(BaseModel):
    """C allocator settings of the agent process (glibc only; ignored elsewhere)."""

    model_config = ConfigDict(extra="forbid")
    malloc_arena_max: int | None = Field(
        2, ge=1, le=64, description="At most this many malloc arenas (mallopt M_ARENA_MAX, set at start before "
        "the worker threads exist). null: glibc's default of 8 per core.")
    mmap_threshold_mb: int | None = Field(
        MMAP_THRESHOLD_MAX_MB, ge=1, le=MMAP_THRESHOLD_MAX_MB, description="Blocks at least this big get their own "
        "mapping, unmapped on free (mallopt M_MMAP_THRESHOLD). CTranslate2 allocates its activations for every "
        "call; below this size they are reused instead of being mapped and zero-filled again. null: glibc's "
        "dynamic default (from 128 kB).")
    trim_threshold_mb: int | None = Field(
        256, ge=1, le=2047, description="Free memory at the top of a heap kept for reuse before free() returns it "
        "to the OS (mallopt M_TRIM_THRESHOLD); the periodic trim still returns it. null: glibc's default.")
    trim_interval_s: float | None = Field(
        60.0, gt=0, le=86400, description="Seconds between malloc_trim(0) calls, which return freed heap pages "
        "to the OS. null: never.")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@dataclass(frozen=True)
class MemorySnapshot:
    """Resident set size and, under glibc, the C heap's bytes in use and free (all in MiB)."""

    rss_mb: float
    heap_in_use_mb: float | None
    heap_free_mb: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {key: None if value is None else round(value, 1) for key, value in asdict(self).items()}


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = _MallInfo2
    return libc


def trim() -> bool:
    """Return free heap pages to the OS; True when some memory was released."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of process ``pid`` (default: this one) in MiB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def snapshot() -> MemorySnapshot:
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return MemorySnapshot(rss_mb(), None, None)
    info = libc.mallinfo2()
    # In use: small blocks + mmapped big blocks; free: free blocks inside the arenas (not yet returned).
    return MemorySnapshot(rss_mb(), (info.uordblks + info.hblkhd) / MIB, info.fordblks / MIB)


def apply_at_start(config: MemoryConfig) -> bool:
    """The process-wide settings, made before the worker threads exist; the agent's entry point calls it.
    False when the C library is not glibc (the settings are then ignored, and logged so)."""
    libc = _glibc()
    if libc is None:
        log.info("memory settings ignored: the C library is not glibc")
        return False
    settings = ((M_ARENA_MAX, config.malloc_arena_max, 1), (M_MMAP_THRESHOLD, config.mmap_threshold_mb, MIB),
                (M_TRIM_THRESHOLD, config.trim_threshold_mb, MIB))
    for param, value, unit in settings:
        if value is not None and not libc.mallopt(param, value * unit):
            raise ValueError(f"memory: glibc refused mallopt({param}, {value * unit})")
    log.debug("malloc settings: %s", config.model_dump())
    return True

