"""Object bodies of any size: where upload chunks come from and where download chunks go."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import IO, Any

from natsgw.client.types import ObjectInfo

#: What ``put_object`` reads: bytes, a path, an open binary file, or chunks (sync or async).
ObjectSource = bytes | str | os.PathLike[str] | IO[bytes] | Iterable[bytes] | AsyncIterable[bytes]


async def chunks_of(source: ObjectSource, size: int) -> AsyncIterator[bytes]:
    """``source`` as chunks of at most ``size`` bytes; files are read off the event loop."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        for start in range(0, len(data), size):
            yield data[start : start + size]
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as handle:  # noqa: ASYNC230 - reads below go through a thread
            async for chunk in _read_file(handle, size):
                yield chunk
    elif hasattr(source, "read"):
        async for chunk in _read_file(source, size):  # type: ignore[arg-type]
            yield chunk
    elif isinstance(source, AsyncIterable):
        async for piece in source:
            for start in range(0, len(piece), size):
                yield piece[start : start + size]
    else:
        for piece in source:
            for start in range(0, len(piece), size):
                yield piece[start : start + size]


async def _read_file(handle: IO[bytes], size: int) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, size):
        yield chunk


class ObjectDownload:
    """An object being read: ``info`` first, then ``async for chunk in download``."""

    def __init__(self, info: ObjectInfo, first_chunk: bytes, stream: Any) -> None:
        self.info = info
        self._first = first_chunk
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._first:
            first, self._first = self._first, b""
            yield first
        while (response := await self._stream.next_response()) is not None:
            if response.chunk:
                yield response.chunk

    async def save(self, path: Path, on_chunk: Callable[[int], None] | None = None) -> None:
        """Write to ``path`` through a temporary file, so a failed download leaves nothing half.

        ``on_chunk`` hears the size of each chunk written (progress bars).
        """
        partial = path.with_name(path.name + ".part")
        handle = await asyncio.to_thread(open, partial, "wb")
        try:
            async for chunk in self:
                await asyncio.to_thread(handle.write, chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
