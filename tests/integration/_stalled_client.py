"""A client process that opens server streams, never reads them, and waits to be killed.

Run as ``python _stalled_client.py PORT RPC USER TARGET COUNT``: opens COUNT streams of RPC
(Subscribe, KVWatch, Consume or ObjectGetStream) with grpclib, prints ``ready`` once the gateway
has answered each with its response headers (so its NATS side is in place), then sleeps without
reading a single message, until the test kills it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality

from natsgw._generated.isa import nats as pb

_REQUESTS: dict[str, Any] = {
    "Subscribe": lambda user, target: (
        pb.SubscribeRequest(user_id=user, subject=target),
        pb.MessageResponse,
    ),
    "KVWatch": lambda user, target: (pb.KvWatchRequest(user_id=user, bucket=target), pb.KvEntry),
    "Consume": lambda user, target: (
        pb.ConsumeRequest(
            user_id=user,
            stream_name=target.split("/")[0],
            consumer_name=target.split("/")[1],
            max_messages=10_000,
            max_bytes=16 * 1024 * 1024,  # NATSGW_CONSUME_MAX_BYTES, the most allowed
        ),
        pb.ConsumeResponse,
    ),
    "ObjectGetStream": lambda user, target: (
        pb.ObjectGetRequest(
            user_id=user, bucket=target.split("/")[0], object_name=target.split("/")[1]
        ),
        pb.ObjectGetStreamResponse,
    ),
}


async def main(port: int, rpc: str, user: str, target: str, count: int) -> None:
    # One channel per stream: each gets its own HTTP/2 connection window to fill.
    channels = [Channel("127.0.0.1", port) for _ in range(count)]
    request, reply_type = _REQUESTS[rpc](user, target)
    streams = []
    for channel in channels:
        stream = channel.request(
            f"/isa.nats.NATSService/{rpc}", Cardinality.UNARY_STREAM, type(request), reply_type
        )
        await stream.__aenter__()
        await stream.send_message(request, end=True)
        await stream.recv_initial_metadata()
        streams.append(stream)
    print("ready", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    port, rpc, user, target, count = sys.argv[1:]
    asyncio.run(main(int(port), rpc, user, target, int(count)))
