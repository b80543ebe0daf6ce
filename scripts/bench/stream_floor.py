"""The client's ceiling on server streams: how many responses per second a client can read.

A bare grpclib server streams ``count`` copies of one pre-encoded ``ConsumeResponse`` (a 128-byte
message with an ack token), written as natsgw writes a burst: many length-prefixed responses per
socket write. No natsgw code, no NATS. What the load generator's reader (grpc.aio, or grpclib)
achieves here is the most any gateway can deliver to it one message per response; the Consume
and Subscribe rows are read by the same clients. Run as its own process:

    python -m scripts.bench.stream_floor PORT
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from typing import Any

import grpc
import grpclib.client
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
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


class _RequestBytes(CodecBase):
    """grpclib codec: requests are raw bytes (the count), responses protobuf messages."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return message_type.FromString(data)


async def read_rate(port: int, count: int, reader: str) -> float:
    """Responses per second a ``reader`` ("grpc.aio" or "grpclib") client reads from the floor
    server on ``port``."""
    if reader == "grpclib":
        channel = grpclib.client.Channel("127.0.0.1", port, codec=_RequestBytes())
        try:
            for rounds in (1, count):  # connection and first response, then the timed read
                async with channel.request(
                    PATH, Cardinality.UNARY_STREAM, bytes, pb2.ConsumeResponse
                ) as stream:
                    await stream.send_message(str(rounds).encode(), end=True)
                    started = time.perf_counter()
                    got = 0
                    async for _ in stream:
                        got += 1
            return got / (time.perf_counter() - started)
        finally:
            channel.close()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as aio_channel:
        call = aio_channel.unary_stream(
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
