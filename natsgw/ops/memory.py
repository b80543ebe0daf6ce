"""glibc malloc tuning: buffers of a megabyte or more go back to the OS as soon as they are freed.

Why: glibc starts with a 128 KiB mmap threshold but raises it to the size of every mmapped block
that is freed (up to 32 MiB). After the first 8 MiB ObjectPut, later 8 MiB buffers (the request,
its decoded copy, the response and grpclib's frames) come from the heap instead, which fragments
and keeps the gateway's RSS well above what is alive. Setting the threshold explicitly turns that
adjustment off: large buffers are mmapped and unmapped, small ones (message chunks, everything
else) stay on the heap as before. An operator's ``MALLOC_MMAP_THRESHOLD_`` is left alone.
Freed heap memory is handed back by :class:`HeapTrimmer`.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
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


def rss() -> int:
    """This process's resident set size in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


class HeapTrimmer:
    """Gives memory back once the RSS rose by ``threshold``: collects cycles, then trims the heap.

    Why, measured with 20 stalled KVWatch streams whose client was killed: what the streams held
    is garbage at once, but (1) part of it hangs off reference cycles (a cancelled call's
    exception, traceback and frames still point at its last messages), which only a full
    collection frees, and an idle gateway may not run one for a long time; (2) message chunks
    (64-128 KiB, under the mmap threshold) live on the heap, and glibc only trims its top, so
    small live blocks pin the rest. So when a stream ended (:meth:`ended`) and the RSS is
    ``threshold`` above where it was after the last collection, a full ``gc.collect()`` runs (at
    most every ``interval`` seconds), then ``malloc_trim(0)``. Memory really in use raises that
    mark instead, so a busy gateway pays one collection and trim per ``threshold`` of growth, not
    one per stream.
    """

    def __init__(self, libc: ctypes.CDLL, threshold: int, interval: float) -> None:
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.argtypes = []
        self._mallinfo2.restype = _MallInfo2
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.argtypes = [ctypes.c_size_t]
        self._malloc_trim.restype = ctypes.c_int
        self.threshold = threshold
        self.interval = interval
        self.trims = 0
        self._base = rss()  # RSS after the last collection, or the lowest seen since
        self._due = False
        self._forced = False

    @classmethod
    def create(cls, threshold: int = 32 * 1024 * 1024, interval: float = 2.0) -> HeapTrimmer | None:
        """A trimmer, or None where this is not glibc (2.33 or later, for ``mallinfo2``)."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None)
            return cls(libc, threshold, interval)
        except (OSError, AttributeError):
            return None

    def free_bytes(self) -> int:
        """Bytes free inside the heap (freed by Python, still held by glibc)."""
        return int(self._mallinfo2().fordblks)

    def ended(self) -> None:
        """A stream ended: what it held may be garbage now (checked at the next tick)."""
        self._due = True

    def trim_soon(self) -> None:
        """A connection was cut with answers waiting for it (natsgw.edge): collect and trim at
        the next tick, whatever ``mallinfo2`` says is free (measured: it reported 13 MiB free
        where ``malloc_trim`` gave back 80 MiB of a cut client's 8 MiB answers)."""
        self._forced = True

    def maybe_trim(self) -> bool:
        """After :meth:`ended`, collect and trim if the RSS is ``threshold`` up; True if so."""
        if self._forced:
            self._forced = self._due = False
            gc.collect()
            self._malloc_trim(0)
            self._base = rss()
            self.trims += 1
            return True
        now = rss()
        self._base = min(self._base, now)
        if not self._due or now - self._base < self.threshold:
            return False
        self._due = False
        gc.collect()
        # Trimmed whatever mallinfo2 says is free: it under-reports what malloc_trim can give back
        # (see trim_soon), and skipping the trim here raised the base to the bloated RSS, so that
        # memory was never returned. The cost (~5 ms for 50 MiB) is paid once per threshold of
        # growth, at most once per interval.
        self._malloc_trim(0)
        self._base = rss()
        self.trims += 1
        return True

    async def run(self) -> None:
        """Check forever (cancel to stop)."""
        while True:
            await asyncio.sleep(self.interval)
            self.maybe_trim()
