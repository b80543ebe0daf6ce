"""The client's ceiling on server streams: how many responses per second grpc.aio can read.

A bare grpclib server streams ``count`` copies of one pre-encoded ``ConsumeResponse`` (a 128-byte
message with an ack token), written as natsgw writes a burst: many length-prefixed responses per
socket write. No natsgw code, no NATS. What the load generator's grpc.aio reader achieves here is
the most any gateway can deliver to it one message per response; the Consume and Subscribe rows
are read by the same client. Run as its own process:

    python -m scripts.bench.stream_floor PORT
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time

import grpc
from grpclib.const import Cardinality, Handler
from grpclib.server import Stream

from natsgw._generated import nats_service_pb2 as pb2
from scripts.bench.bare import serve

PATH = "/natsgw.bench.StreamFloor/Stream"
#: Bytes per write, as natsgw.pipeline.streaming.WRITE_SLICE.
WRITE = 64 * 1024


def _response() -> bytes:
    out = pb2.ConsumeResponse(outstanding_messages=1000, outstanding_bytes=300_000)
    message = out.message
    message.subject = "benchcons.x"
    message.data = b"x" * 128
    message.sequence = 123_456
    message.timestamp.seconds = 1_764_521_234
    message.timestamp.nanos = 123_456_000
    message.num_delivered = 1
    message.ack_token = "2~" + "A" * 150  # about the size of a real token
    message.consumer_sequence = 123_456
    message.num_pending = 10_000
    body = bytes(out.SerializeToString())
    return struct.pack(">BI", 0, len(body)) + body


class StreamFloor:
    def __init__(self) -> None:
        self.frame = _response()

    async def stream(self, stream: Stream[bytes, bytes]) -> None:
        count = int(await stream.recv_message() or b"0")
        await stream.send_initial_metadata()
        per_write = max(1, WRITE // len(self.frame))
        sent = 0
        while sent < count:
            batch = min(per_write, count - sent)
            # The raw h2 stream, as natsgw.compat.grpclib.send_data writes a burst.
            await stream._stream.send_data(self.frame * batch)
            sent += batch
        await stream.send_trailing_metadata()

    def __mapping__(self) -> dict[str, Handler]:
        return {PATH: Handler(self.stream, Cardinality.UNARY_STREAM, bytes, bytes)}


async def read_rate(port: int, count: int) -> float:
    """Responses per second a grpc.aio client reads from the floor server on ``port``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(
            PATH,
            request_serializer=bytes,
            response_deserializer=pb2.ConsumeResponse.FromString,
        )
        async for _ in call(b"1"):  # connection and first response, not timed
            pass
        got = 0
        started = time.perf_counter()
        async for _ in call(str(count).encode()):
            got += 1
        return got / (time.perf_counter() - started)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), StreamFloor()))
