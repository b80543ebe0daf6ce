"""The load generator's side: a grpc.aio client of natsgw's API, and shared measuring helpers.

Calls go through grpcio (the clients that exist in the field) with Google's upb message classes,
built from the service descriptor, so the client spends as little CPU as possible per call.
Requests may be passed pre-serialized (``bytes``) to keep encoding out of the timed loops.
Server streams can also be read by a grpclib client (:func:`open_stream`), the stack natsgw's
own client library uses: on a small machine grpc.aio's reader, not the server, bounds a stream
of one message per response.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpclib.client
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError

from natsgw._generated import nats_service_pb2 as pb2

SERVICE = "isa.nats.NATSService"
USER = "bench-user"


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


class GatewayClient:
    """``client.unary("Publish")(request)`` / ``client.stream("Subscribe")(request)``."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._methods = pb2.DESCRIPTOR.services_by_name["NATSService"].methods_by_name

    def response_type(self, name: str) -> Any:
        return getattr(pb2, self._methods[name].output_type.name)

    def unary(self, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
        return self.channel.unary_unary(
            f"/{SERVICE}/{name}",
            request_serializer=_serialize,
            response_deserializer=self.response_type(name).FromString,
        )

    def client_stream(self, name: str) -> grpc.aio.StreamUnaryMultiCallable:
        return self.channel.stream_unary(
            f"/{SERVICE}/{name}",
            request_serializer=_serialize,
            response_deserializer=self.response_type(name).FromString,
        )

    def stream(self, name: str) -> grpc.aio.UnaryStreamMultiCallable:
        return self.channel.unary_stream(
            f"/{SERVICE}/{name}",
            request_serializer=_serialize,
            response_deserializer=self.response_type(name).FromString,
        )


class StreamEnded(Exception):
    """The server ended a stream with an error status (``code``: its name)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class ServerStream:
    """A server stream being read: iterate for responses; :meth:`cancel` to stop."""

    def __init__(self, responses: AsyncIterator[Any], cancel: Callable[[], object]) -> None:
        self._responses = responses
        self.cancel = cancel

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses


async def open_stream(
    client: GatewayClient, port: int, reader: str, method: str, request: Any
) -> ServerStream:
    """Call server-streaming ``method`` with a ``reader`` ("grpc.aio" through ``client``, or
    "grpclib" on a channel of its own); returns once the response headers arrived (natsgw sends
    them when the stream is in place)."""
    if reader == "grpc.aio":
        call = client.stream(method)(request)
        await call.initial_metadata()

        async def aio_responses() -> AsyncIterator[Any]:
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as exc:
                raise StreamEnded(exc.code().name) from exc

        return ServerStream(aio_responses(), call.cancel)
    channel = grpclib.client.Channel("127.0.0.1", port)
    response_type = client.response_type(method)
    stream = channel.request(
        f"/{SERVICE}/{method}", Cardinality.UNARY_STREAM, type(request), response_type
    )
    await stream.__aenter__()  # left by closing the channel (cancel)
    await stream.send_message(request, end=True)
    await stream.recv_initial_metadata()

    async def grpclib_responses() -> AsyncIterator[Any]:
        try:
            async for response in stream:
                yield response
        except GRPCError as exc:
            raise StreamEnded(exc.status.name) from exc

    return ServerStream(grpclib_responses(), channel.close)


def channel(port: int) -> grpc.aio.Channel:
    limit = 64 * 1024 * 1024
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ],
    )


async def wait_healthy(client: GatewayClient, timeout: float = 30) -> None:
    check = client.unary("HealthCheck")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await check(pb2.NATSHealthCheckRequest(), timeout=2)).healthy:
                return
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway did not become healthy")
        await asyncio.sleep(0.2)


async def in_flight(concurrency: int, count: int, call: Callable[[int], Awaitable[Any]]) -> float:
    """Run ``call(0..count-1)`` with ``concurrency`` calls outstanding; returns elapsed seconds."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await call(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return time.perf_counter() - started


async def timed(work: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await work
    return time.perf_counter() - started


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    if fraction == 0.5:
        return statistics.median(sorted_values)
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]
