"""Host memory: let this process keep the memory it frees, so that every training step reuses
pages it has already touched instead of faulting fresh ones in.

Why: glibc's malloc serves a block larger than its mmap threshold with new pages from the OS
and returns them on free, and gives the top of its heap back once more than its trim
threshold is free. A training step frees its activations and gradients and allocates them
again the next step, so each step pays a page fault per 4 KiB of them. Measured on the 2-core
CPU (README, "Performance"): a packed step (K=8, batch 2) took 310-1,160 minor faults; with the
thresholds below, 12-24, and the step was 10-20% faster.

PyTorch's CPU performance guide gets the same effect by preloading jemalloc or tcmalloc
(``LD_PRELOAD``), which must happen before the process starts; a console script cannot do
that for its own process. glibc's ``mallopt`` sets the same thresholds at run time, and no
well-kept Python library wraps it, hence these few lines. Nothing numeric changes: only where
freed memory goes. A user who chose an allocator (``LD_PRELOAD``) or glibc's malloc settings
(``MALLOC_*_`` variables, ``GLIBC_TUNABLES``) keeps that choice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform

log = logging.getLogger("normbench")

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap: glibc's largest mmap threshold on 64-bit
#: (4 MiB * sizeof(long), the upper bound of its own dynamic threshold).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap is given back to the OS only past this.
TRIM_THRESHOLD = 2**30

USER_SETTINGS = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                 "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> str:
    """Set glibc malloc's mmap and trim thresholds for this process (once); returns what was
    done: ``kept`` (set), or why not (``not glibc``, ``user's <variable>``, ``mallopt refused``)."""
    chosen = next((name for name in USER_SETTINGS if os.environ.get(name)), None)
    if chosen:
        return f"user's {chosen}"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.debug("host memory: glibc's mallopt refused the thresholds; malloc keeps its defaults")
        return "mallopt refused"
    return "kept"
