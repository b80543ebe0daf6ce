"""A noisy tenant, as a process of its own: many streams on one subject, big messages, fast.

``python _noisy_tenant.py PORT USER SECONDS STREAMS SIZE``: opens STREAMS Subscribe streams on
one subject (reading as fast as they can), prints ``ready``, then publishes SIZE-byte messages
there from 4 concurrent publishers for SECONDS, and prints one JSON line of what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb


async def main(port: int, user: str, seconds: float, count: int, size: int) -> None:
    channels = [Channel("127.0.0.1", port) for _ in range(max(1, count // 10))]
    received = [0] * count
    dropped = [0] * count
    streams: list[Any] = []
    for index in range(count):
        stream = channels[index % len(channels)].request(
            "/isa.nats.NATSService/Subscribe",
            Cardinality.UNARY_STREAM,
            pb.SubscribeRequest,
            pb.MessageResponse,
        )
        await stream.__aenter__()
        await stream.send_message(pb.SubscribeRequest(user_id=user, subject="firehose"), end=True)
        await stream.recv_initial_metadata()
        streams.append(stream)

    async def read(index: int) -> None:
        while (got := await streams[index].recv_message()) is not None:
            received[index] += 1
            dropped[index] = got.dropped

    readers = [asyncio.ensure_future(read(i)) for i in range(count)]
    print("ready", flush=True)
    publisher = pb.NatsServiceStub(Channel("127.0.0.1", port))
    data = os.urandom(size)
    published = failed = 0
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    async def publish() -> None:
        nonlocal published, failed
        while time.monotonic() < stop_at:
            try:
                await publisher.publish(
                    pb.PublishRequest(user_id=user, subject="firehose", data=data), timeout=10
                )
                published += 1
            except (GRPCError, TimeoutError) as exc:
                failed += 1
                errors.append(str(exc)[:200])

    await asyncio.gather(*(publish() for _ in range(4)))
    await asyncio.sleep(1.0)
    for reader in readers:
        reader.cancel()
    print(
        json.dumps(
            {
                "published": published,
                "failed": failed,
                "errors": errors[:3],
                "received_min": min(received),
                "received_max": max(received),
                "dropped_max": max(dropped),
            }
        ),
        flush=True,
    )
    os._exit(0)  # no goodbyes: the streams go away with the process


if __name__ == "__main__":
    port, user, seconds, count, size = sys.argv[1:]
    asyncio.run(main(int(port), user, float(seconds), int(count), int(size)))
