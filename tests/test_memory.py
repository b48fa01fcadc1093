"""The C allocator controls the agent uses to keep RSS from creeping (glibc; skipped elsewhere)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from pydantic import ValidationError

from edge_ser import memory
from edge_ser.config import AgentConfig

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim/mallinfo2 are glibc's")

# Fill the main arena with 2,000 blocks of 100 kB (below the mmap threshold, so they come from the heap),
# free all but the last (which pins the heap top, so free() cannot shrink it), then trim.
_FRAGMENT_THEN_TRIM = """
import ctypes, json
from edge_ser import memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(100_000) for _ in range(2000)]
for block in blocks:
    ctypes.memset(block, 1, 100_000)
for block in blocks[:-1]:
    libc.free(block)
freed = memory.snapshot()
released = memory.trim()
print(json.dumps({"freed": freed.to_dict(), "trimmed": memory.snapshot().to_dict(), "released": released}))
"""


@glibc
def test_trim_returns_freed_heap_pages_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", _FRAGMENT_THEN_TRIM], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    freed, trimmed = result["freed"], result["trimmed"]
    assert result["released"] is True
    assert freed["heap_free_mb"] > 150, freed  # ~190 MiB freed but still mapped ...
    assert freed["rss_mb"] - trimmed["rss_mb"] > 150, result  # ... until malloc_trim hands it back


@glibc
def test_snapshot_reads_rss_and_heap() -> None:
    snap = memory.snapshot()
    with open("/proc/self/status") as f:
        vm_rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert abs(snap.rss_mb - vm_rss_kb / 1024) < 0.05 * snap.rss_mb
    assert snap.heap_in_use_mb is not None and snap.heap_in_use_mb > 0
    assert snap.heap_free_mb is not None and snap.heap_free_mb >= 0
    assert set(snap.to_dict()) == {"rss_mb", "heap_in_use_mb", "heap_free_mb"}


@glibc
def test_the_agents_settings_are_accepted_by_glibc() -> None:
    code = "from edge_ser import memory; print(memory.apply_at_start(memory.MemoryConfig()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_memory_config_defaults_and_limits() -> None:
    config = AgentConfig.model_validate({"sources": []})
    assert config.memory.malloc_arena_max == 2 and config.memory.trim_interval_s == 60.0
    assert config.memory.mmap_threshold_mb == 32 and config.memory.trim_threshold_mb == 256
    off = AgentConfig.model_validate({"sources": [], "memory": {"malloc_arena_max": None, "trim_interval_s": None}})
    assert off.memory.malloc_arena_max is None and off.memory.trim_interval_s is None
    with pytest.raises(ValidationError, match="malloc_arena_max"):
        AgentConfig.model_validate({"sources": [], "memory": {"malloc_arena_max": 0}})
    with pytest.raises(ValidationError, match="mmap_threshold_mb"):  # glibc's ceiling is 32 MiB
        AgentConfig.model_validate({"sources": [], "memory": {"mmap_threshold_mb": 64}})
    with pytest.raises(ValidationError, match="trim_interval"):
        AgentConfig.model_validate({"sources": [], "memory": {"trim_interval": 5}})
