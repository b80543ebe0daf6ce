"""What JetStream holds, as plain values: stream names, sizes and consumer counts (for quotas).

Names in and out are NATS names; the caller (natsgw.pipeline.quotas) maps them with natsgw.tenancy.
"""

from __future__ import annotations

from dataclasses import dataclass

from natsgw.adapter.core import NatsAdapter
from natsgw.adapter.errors import translated
from natsgw.errors import NotFound

#: JetStream's page size for STREAM.LIST.
_PAGE = 256


@dataclass(frozen=True, slots=True)
class StreamSummary:
    name: str
    #: The stream's byte limit; 0 or negative means unlimited.
    max_bytes: int
    consumers: int


async def list_streams(adapter: NatsAdapter, prefixes: tuple[str, ...]) -> list[StreamSummary]:
    """Every stream whose name starts with one of ``prefixes`` (one paged STREAM.LIST)."""
    js = adapter.jetstream()
    found: list[StreamSummary] = []
    offset = 0
    with translated("list streams"):
        while True:
            page = await js.streams_info(offset)
            for info in page:
                name = info.config.name or ""
                if name.startswith(prefixes):
                    found.append(
                        StreamSummary(
                            name=name,
                            max_bytes=int(info.config.max_bytes or -1),
                            consumers=int(info.state.consumer_count or 0),
                        )
                    )
            offset += len(page)
            if len(page) < _PAGE:
                return found


async def stream_summary(adapter: NatsAdapter, name: str) -> StreamSummary | None:
    """The stream, or None when it does not exist."""
    js = adapter.jetstream()
    try:
        with translated("stream info"):
            info = await js.stream_info(name)
    except NotFound:
        return None
    return StreamSummary(
        name=name,
        max_bytes=int(info.config.max_bytes or -1),
        consumers=int(info.state.consumer_count or 0),
    )


async def consumer_exists(adapter: NatsAdapter, stream: str, consumer: str) -> bool:
    js = adapter.jetstream()
    try:
        with translated("consumer info"):
            await js.consumer_info(stream, consumer)
    except NotFound:
        return False
    return True


async def limit_stream_bytes(adapter: NatsAdapter, name: str, max_bytes: int) -> bool:
    """Lower the stream's byte limit to ``max_bytes`` when it is unlimited or higher; True if so."""
    js = adapter.jetstream()
    with translated("stream byte limit"):
        info = await js.stream_info(name)
        current = int(info.config.max_bytes or -1)
        if 0 < current <= max_bytes:
            return False
        config = info.config
        config.max_bytes = max_bytes
        await js.update_stream(config)
    return True
