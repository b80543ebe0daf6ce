"""glibc mmap threshold tuning (natsgw.ops.memory)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from natsgw.ops.memory import return_large_buffers


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)
def test_threshold_is_set_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert return_large_buffers() is True


def test_an_operators_own_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_large_buffers() is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)
def test_freed_heap_memory_goes_back_to_the_os() -> None:
    # In a fresh process: what a long test session left in this heap would blur the figures.
    done = subprocess.run([sys.executable, "-c", _TRIM_SCENARIO], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


_TRIM_SCENARIO = """
from natsgw.ops.memory import HeapTrimmer, rss

MIB = 1024 * 1024
trimmer = HeapTrimmer.create(threshold=8 * MIB)
assert trimmer is not None
# 64 KiB chunks (heap, under the mmap threshold) pinned apart by small live blocks, as message
# chunks sit between a stream's other allocations: glibc cannot trim them by itself.
chunks, pins = [], []
for index in range(512):
    chunks.append(bytes([index % 251]) * (64 * 1024))
    pins.append(bytes([index % 251]) * 1024)
del chunks
held = rss()
assert trimmer.free_bytes() >= 24 * MIB, trimmer.free_bytes()
assert trimmer.maybe_trim() is False  # no stream ended: nothing to look at
trimmer.ended()
assert trimmer.maybe_trim() is True
assert rss() < held - 16 * MIB, (held, rss())
trimmer.ended()
assert trimmer.maybe_trim() is False  # RSS did not grow since: no second collection
assert len(pins) == 512
print("ok")
"""
