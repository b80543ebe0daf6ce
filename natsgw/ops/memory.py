"""glibc malloc tuning: buffers of a megabyte or more go back to the OS as soon as they are freed.

Why: glibc starts with a 128 KiB mmap threshold but raises it to the size of every mmapped block
that is freed (up to 32 MiB). After the first 8 MiB ObjectPut, later 8 MiB buffers (the request,
its decoded copy, the response and grpclib's frames) come from the heap instead, which fragments
and keeps the gateway's RSS well above what is alive. Setting the threshold explicitly turns that
adjustment off: large buffers are mmapped and unmapped, small ones (message chunks, everything
else) stay on the heap as before. An operator's ``MALLOC_MMAP_THRESHOLD_`` is left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's ``mallopt`` parameter number for the mmap threshold (malloc.h: ``M_MMAP_THRESHOLD``).
_M_MMAP_THRESHOLD = -3
LARGE_BUFFER = 1024 * 1024


def return_large_buffers(threshold: int = LARGE_BUFFER) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where that does not apply."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (or no symbol table): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
