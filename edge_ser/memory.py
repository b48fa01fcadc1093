"""Process memory of a long-running agent: what it holds, and the C allocator settings that let it give back
what it freed.

Under glibc every thread that allocates may get its own malloc arena (up to 8 per core), and a freed block
returns to the operating system only when it sits at the top of its heap. The agent's threads (CTranslate2
replicas, the batcher, decoders, the event loop) allocate buffers of ever-different sizes (window lengths x
batch sizes), so freed memory stays mapped in many partly used arenas and RSS creeps up although the live
heap does not grow (docs/reliability.md, soak). Two process-wide remedies, both from the ``memory`` config:

* ``limit_arenas(n)``: ``mallopt(M_ARENA_MAX, n)`` before the worker threads start;
* ``trim()``: ``malloc_trim(0)`` now and then, which hands free pages in every arena back to the kernel.

``snapshot()`` reads RSS (``/proc/self/statm``) and the heap in use / free (``mallinfo2``) for the stats
topic and the Prometheus metrics. Everything here is a no-op (returns ``False`` / ``None``) where the C
library is not glibc.
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

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
MIB = 1024 * 1024


class MemoryConfig(BaseModel):
    """C allocator settings of the agent process (glibc only; ignored elsewhere)."""

    model_config = ConfigDict(extra="forbid")
    malloc_arena_max: int | None = Field(
        2, ge=1, le=64, description="At most this many malloc arenas (mallopt M_ARENA_MAX, set at start before "
        "the worker threads exist). null: glibc's default of 8 per core.")
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


def limit_arenas(count: int) -> bool:
    """Cap the number of malloc arenas; True when glibc accepted it. Affects arenas created afterwards."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Return free heap pages to the OS; True when some memory was released."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def snapshot() -> MemorySnapshot:
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return MemorySnapshot(rss_mb(), None, None)
    info = libc.mallinfo2()
    # In use: small blocks + mmapped big blocks; free: free blocks inside the arenas (not yet returned).
    return MemorySnapshot(rss_mb(), (info.uordblks + info.hblkhd) / MIB, info.fordblks / MIB)


def apply_at_start(config: MemoryConfig) -> None:
    """The process-wide settings that must precede the worker threads; the agent's entry point calls it."""
    if config.malloc_arena_max is not None:
        if limit_arenas(config.malloc_arena_max):
            log.debug("malloc arenas limited to %d", config.malloc_arena_max)
        else:
            log.info("memory.malloc_arena_max ignored: the C library is not glibc")

