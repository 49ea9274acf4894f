"""The server's memory after a burst: glibc's allocator keeps freed memory for reuse, so without
help the process stays at the peak of its last burst (measured: 830 MB two minutes after a burst
of 100 that started at 666 MB; with these settings 660 MB from 642 MB, and a peak of 1.28 GB
instead of 1.59 GB; benchmarks/soak_demo.py). Elsewhere than glibc both calls do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20  # arrays from 1 MB (images, heatmaps) get pages of their own, unmapped when freed
ARENAS = 2  # not one heap per worker thread (Gradio runs up to 40), each holding on to its peak

_name = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_name) if _name else None


def tune() -> None:
    """Call before threads start and large arrays are made."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_ARENA_MAX, ARENAS)


def release() -> None:
    """Hand the heap's free pages back to the system (after a request, and when a session goes)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
