"""glibc mmap threshold tuning (natsgw.ops.memory)."""

from __future__ import annotations

import platform
import sys

import pytest

from natsgw.ops.memory import HeapTrimmer, return_large_buffers, rss

MIB = 1024 * 1024


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
    trimmer = HeapTrimmer.create(threshold=8 * MIB)
    assert trimmer is not None
    trimmer.maybe_trim()  # start from what is free now
    # 64 KiB chunks (heap, under the mmap threshold) pinned apart by small live blocks, as
    # message chunks sit between a stream's other allocations: glibc cannot trim by itself.
    chunks, pins = [], []
    for index in range(512):
        chunks.append(bytes([index % 251]) * (64 * 1024))
        pins.append(bytes([index % 251]) * 1024)
    del chunks
    held = rss()
    # Freed, still held by glibc (how much depends on the heap's past: other tests ran here).
    assert trimmer.free_bytes() >= 8 * MIB
    assert trimmer.maybe_trim() is False  # no stream ended: nothing to look at
    trimmer.ended()
    assert trimmer.maybe_trim() is True
    assert rss() < held - 8 * MIB
    trimmer.ended()
    assert trimmer.maybe_trim() is False  # RSS did not grow since: no second collection
    assert len(pins) == 512
