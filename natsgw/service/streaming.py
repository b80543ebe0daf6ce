"""Writing server streams to the client: the send loop every streaming handler runs under.

A streaming handler is an async generator. grpclib's generated code awaits ``send_message``
*outside* it, so a call cancelled while a send waits (a client that stopped reading, then
vanished) would leave the generator suspended at its ``yield``: its ``finally`` — the NATS
subscription, the buffers, the registry entry — would wait for the garbage collector.
:func:`serve_stream` closes the generator however the call ends, shielded so that a second
cancellation (grpclib cancels again when it closes the connection) cannot cut the cleanup short.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpclib.server


async def serve_stream(
    responses: AsyncIterator[Any], stream: grpclib.server.Stream[Any, Any]
) -> None:
    """Send every response the handler yields; close the handler whatever happens."""
    try:
        async for response in responses:
            await stream.send_message(response)
    finally:
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:
            await asyncio.shield(aclose())
