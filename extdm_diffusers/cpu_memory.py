"""Let a CPU process reuse the memory it frees instead of handing it back to the kernel at every free.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB by default) with a fresh ``mmap`` and
returns it with ``munmap`` when torch frees it, and it returns the top of its heap to the kernel once more than the
trim threshold is free there. A training step frees and reallocates the same blocks every step (weight gradients,
activations, oneDNN's reordered weights), so every step pays the kernel's page faults again: zeroing fresh pages
cost more than the arithmetic in the autoencoder's 1024-channel convolutions (docs/performance.md). Raising both
thresholds keeps the freed blocks in the process for the next step; the peak resident memory stays what it was.
The command-line tools call :func:`reuse_freed_cpu_memory` at start; code that drives the models itself can too."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Above the largest block a step churns (the autoencoder's 1024 x 1024 x 3 x 3 weight gradients are 37.7 MB);
# where glibc caps the mmap threshold lower, the cap is taken.
REUSED_BLOCK_BYTES = 1 << 30
GLIBC_MMAP_THRESHOLD_CAP = 32 << 20
# glibc's own settings, which a user who set them has chosen over ours
_GLIBC_MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_applied = None


@functools.lru_cache(maxsize=None)
def _glibc_mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def set_glibc_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds (bytes) for this process; False where the C library is not glibc or
    refuses a value (glibc before 2.26 caps the mmap threshold at 32 MiB)."""
    mallopt = _glibc_mallopt()
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def reuse_freed_cpu_memory() -> bool:
    """Keep blocks freed by this process for its next allocations (glibc ``mallopt``); True where it now does.

    A no-op returning False on other C libraries and where the user has set glibc's malloc environment variables
    or ``GLIBC_TUNABLES`` malloc tunables (their choice stands). The setting is for the whole process: later calls
    return the first call's answer."""
    global _applied
    if _applied is None:
        if any(name in os.environ for name in _GLIBC_MALLOC_ENVIRONMENT) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
            logger.info("glibc's malloc settings come from the environment; they are left as set")
            _applied = False
        else:
            _applied = (set_glibc_malloc_thresholds(REUSED_BLOCK_BYTES, REUSED_BLOCK_BYTES)
                        or set_glibc_malloc_thresholds(GLIBC_MMAP_THRESHOLD_CAP, REUSED_BLOCK_BYTES))
    return _applied
