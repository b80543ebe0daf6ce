"""Reflection finds every kind of symbol grpcurl and IDEs ask for, on both protocol versions."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.reflection.v1 import reflection_grpc as v1_grpc
from grpclib.reflection.v1 import reflection_pb2 as v1
from grpclib.reflection.v1alpha import reflection_grpc as v1alpha_grpc
from grpclib.reflection.v1alpha import reflection_pb2 as v1alpha

from natsgw.server import Gateway

#: symbol -> the file that must come back
FOUND = {
    "isa.nats.NATSService": "nats_service.proto",  # service
    "isa.nats.NATSService.Publish": "nats_service.proto",  # method (what grpcurl describes)
    "isa.nats.NATSService.KVWatch": "nats_service.proto",  # a streaming method
    "isa.nats.PublishRequest": "nats_service.proto",  # message
    "isa.nats.PublishRequest.subject": "nats_service.proto",  # field
    "isa.nats.StorageType": "nats_service.proto",  # enum
    "isa.nats.STORAGE_MEMORY": "nats_service.proto",  # enum value, package scope
    "isa.nats.StorageType.STORAGE_MEMORY": "nats_service.proto",  # enum value, under its enum
    "grpc.health.v1.Health.Check": "grpclib/health/v1/health.proto",  # another file's method
}
MISSING = ("isa.nats.NATSService.Nope", "isa.nats.Nope", "isa.nats.StorageType.NOPE", "isa")

VERSIONS = pytest.mark.parametrize(
    ("stub_cls", "pb"),
    [
        (v1_grpc.ServerReflectionStub, v1),
        (v1alpha_grpc.ServerReflectionStub, v1alpha),
    ],
    ids=["v1", "v1alpha"],
)


async def _ask(gateway: Gateway, stub_cls: Any, pb: Any, symbols: list[str]) -> list[Any]:
    """One reflection stream, one request per symbol (as grpcurl keeps one stream open)."""
    channel = Channel("127.0.0.1", gateway.port)
    replies = []
    try:
        async with stub_cls(channel).ServerReflectionInfo.open() as stream:
            for symbol in symbols:
                await stream.send_message(pb.ServerReflectionRequest(file_containing_symbol=symbol))
                replies.append(await stream.recv_message())
            await stream.end()
    finally:
        channel.close()
    return replies


@VERSIONS
async def test_every_kind_of_symbol_is_found(gateway: Gateway, stub_cls: Any, pb: Any) -> None:
    replies = await _ask(gateway, stub_cls, pb, list(FOUND))
    for (symbol, file_name), reply in zip(FOUND.items(), replies, strict=True):
        assert reply.WhichOneof("message_response") == "file_descriptor_response", symbol
        first = FileDescriptorProto.FromString(
            reply.file_descriptor_response.file_descriptor_proto[0]
        )
        assert first.name == file_name, symbol
    publish = FileDescriptorProto.FromString(
        replies[1].file_descriptor_response.file_descriptor_proto[0]
    )
    assert "Publish" in [m.name for m in publish.service[0].method]


@VERSIONS
async def test_unknown_symbols_are_not_found(gateway: Gateway, stub_cls: Any, pb: Any) -> None:
    replies = await _ask(gateway, stub_cls, pb, list(MISSING))
    for symbol, reply in zip(MISSING, replies, strict=True):
        assert reply.WhichOneof("message_response") == "error_response", symbol
        assert reply.error_response.error_code == Status.NOT_FOUND.value
