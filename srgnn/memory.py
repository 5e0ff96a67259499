"""Keep freed CPU memory in the process, so big per-step tensors are not re-faulted every step.

PyTorch's CPU tensors come from glibc's malloc, which serves blocks over its mmap threshold (at
most 32 MiB) with a fresh ``mmap`` and returns them with ``munmap`` when freed. A training step
at 40,000 items allocates and frees several such blocks (the [B, n_items] scores, the [n_items, d]
gradients), so every step touches ~35 MB of new pages: ~8,800 minor page faults and ~23 ms of
kernel time per step on the 2-core machine, a quarter of the step (docs/benchmarks.md).

``keep_freed_memory()`` raises the mmap threshold to glibc's maximum and turns heap trimming off:
blocks up to 32 MiB then come from the heap and stay there once freed, and
the next step reuses them without faults. The process's resident memory stays at its peak (a
training or scoring process, not a long-lived server). Blocks over 32 MiB (the scores of more
than ~80,000 items at batch 100) still go through mmap; the same can be set before start with
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or a caching malloc (jemalloc, tcmalloc).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

from srgnn.core.log import get_logger

log = get_logger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024        # glibc's cap on 64-bit (HEAP_MAX_SIZE / 2)
NO_TRIM = -1                                 # M_TRIM_THRESHOLD -1: never give the heap top back

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; False where there is no glibc (macOS, musl)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, NO_TRIM))
    if _applied:
        log.info("malloc: blocks up to %d MiB from the heap, freed memory kept (no page faults per step)",
                 MMAP_THRESHOLD_MAX >> 20)
    return _applied
