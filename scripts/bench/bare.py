"""A bare grpclib server answering ``Publish`` with a fixed response: the unary floor.

No natsgw code and no decoding: the request bytes are read and dropped, the answer is a constant
``PublishResponse{success: true, message: "published"}`` written by hand. Run as its own process:

    python -m scripts.bench.bare PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server, Stream

#: PublishResponse: field 1 (bool) = true, field 2 (string) = "published".
FIXED_RESPONSE = b"\x08\x01\x12\x09published"


class RawCodec(CodecBase):
    """Passes bytes through untouched (content subtype ``proto``, so grpcio clients accept it)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class BarePublish:
    async def publish(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(FIXED_RESPONSE)

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/isa.nats.NATSService/Publish": Handler(
                self.publish, Cardinality.UNARY_UNARY, bytes, bytes
            )
        }


async def serve(port: int, handler: Any = None) -> None:
    """Serve ``handler`` (the bare Publish by default) with raw bytes until SIGTERM/SIGINT."""
    server = Server([handler or BarePublish()], codec=RawCodec())
    await server.start("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
