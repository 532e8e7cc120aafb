"""Keeping freed memory for the next call (CPU inference on Linux with glibc).

By default glibc's malloc gives blocks above its mmap threshold (128 KB, raised dynamically only
up to the largest block freed so far) and any free heap top above its trim threshold back to the
kernel. A decoder pass allocates and frees ~30 MB of temporaries, so every click took those pages
back from the kernel, zero-filled, one page fault per 4 KB: measured 5,000-8,000 faults and up to
40% of a prompt's decode time on this project's 2-core VM (more when the host is busy). Here the
allocator is the slow part, so it is tuned rather than worked around with buffers kept by hand:
raising both thresholds keeps freed blocks in the heap for the next call, as jemalloc or tcmalloc
would. The setting is process-wide and made once; SAMKIT_MALLOC_TUNING=0 leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit; larger blocks are still mapped
TRIM_THRESHOLD = 256 << 20  # free heap kept for reuse before any is returned

_tuned: bool | None = None
_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: not glibc


def _glibc():
    """glibc (ctypes), or None off Linux or where the C library is not glibc (musl, ...)."""
    global _libc
    if _libc is False:
        _libc = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process. True when they are raised; False
    off Linux/glibc or when SAMKIT_MALLOC_TUNING=0."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    libc = _glibc()
    if libc is None or os.environ.get("SAMKIT_MALLOC_TUNING", "1") == "0":
        return False
    _tuned = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _tuned


def release_freed_memory() -> None:
    """Give the heap's free pages back to the kernel now (glibc's malloc_trim; a no-op elsewhere).

    For long loops whose allocation sizes vary from one pass to the next (fine-tuning: each step
    decodes a different number of objects from a different image). With the thresholds above,
    glibc keeps their freed blocks, and the heap then grows with the variety of sizes seen, not
    with what one pass needs. One call per pass costs far less than the pass itself."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
