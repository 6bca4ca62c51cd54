"""glibc's allocator settings for a process that dinov3kit owns: the `dinov3kit` command, never a library
caller's process (changing them is a process-wide act, left to whoever owns the process).

By default glibc hands multi-megabyte blocks back to the kernel when they are freed (blocks above a moving
mmap threshold, and free memory above a trim threshold at the top of the heap), so the next forward's
activations of the same size are fresh pages again, each one a page fault on first touch. Between runs of
the same code that decided whether a bf16 ViT-S batch of 16 on a Xeon with AMX took 0.2k or 46k faults
and 272 or 340 ms (benchmarks/README.md). `keep_freed_memory()` sets a fixed mmap threshold of 32 MB (the
most glibc allows) and no trimming, so freed activations are reused: resident memory then stays at the peak
of the run. Library users can get the same with the environment variables MALLOC_MMAP_THRESHOLD_=33554432
and MALLOC_TRIM_THRESHOLD_=2147483647, set before Python starts (or jemalloc / tcmalloc via LD_PRELOAD).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: The largest fixed mmap threshold glibc accepts on 64-bit systems.
MMAP_THRESHOLD_BYTES = 32 << 20
#: The largest trim threshold mallopt takes (an int): freed memory stays with the process.
TRIM_THRESHOLD_BYTES = (1 << 31) - 1
#: Environment variables with which a user has already chosen the allocator's behaviour.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed blocks in this process (see the module's docstring). Returns whether
    it did: not where the C library is not glibc, nor where the user set one of USER_SETTINGS."""
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
