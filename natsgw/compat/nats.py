"""nats-py internals the adapter needs (natsgw.adapter is the only user of this module)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import nats.aio.client

from natsgw.compat import require

if TYPE_CHECKING:
    from nats.aio.client import Client

PINNED = "2.16.0"
require("nats-py", PINNED, __name__)


async def flush_pending(client: Client) -> None:
    """Write every command nats-py still holds in its queue to the socket, now.

    Why: ``Client.flush()`` writes its PING straight to the transport, ahead of PUB/SUB commands
    still queued for nats-py's flusher task, so its PONG can come back before those commands were
    even sent; a publish confirmation (or an announced subscription) must follow what it
    confirms. tests/integration/test_adapter_ordering.py records the socket writes.
    Upstream fix that removes it: ``flush()`` queueing its PING behind pending commands, or a
    public buffer-flush call like nats.go's ``FlushBuffer`` / nats.java's ``flushBuffer()``.
    """
    await client._flush_pending(force_flush=True)


def server_info(client: Client) -> Mapping[str, Any]:
    """The INFO block the connected server sent (a copy).

    Why: nats-py exposes ``max_payload`` and ``connected_server_version`` only; the server's id
    and name and whether it has JetStream and headers (shown by the health and stats RPCs) are
    only in the private ``_server_info``.
    Upstream fix that removes it: public accessors like nats.go's ``ConnectedServerId()``,
    ``ConnectedServerName()`` and ``HeadersSupported()``.
    """
    return dict(client._server_info)


def set_read_size(size: int) -> None:
    """Make nats-py read up to ``size`` bytes from its socket per turn of the event loop.

    Why: nats-py reads 32 KiB per turn. A gateway with many streams writing to gRPC clients then
    reads NATS too slowly and nats-server cuts its connection as a slow consumer; 1 MiB per turn
    keeps the read side ahead. The size is the module constant ``DEFAULT_BUFFER_SIZE``, read at
    connect and on each read, with no connect option; setting it is process-wide (natsgw is the
    only nats-py user in its process).
    Upstream fix that removes it: a ``read_buffer_size`` option on ``nats.connect`` (nats.go
    and nats.java size their read buffers per connection).
    """
    nats.aio.client.DEFAULT_BUFFER_SIZE = size
