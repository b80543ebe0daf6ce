"""The API documents itself: every RPC and message has a comment, and reflection serves them."""

from __future__ import annotations

from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.client import Channel
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from natsgw.server import Gateway
from natsgw.wire.reflection import documented_files

# FileDescriptorProto field numbers, as SourceCodeInfo paths use them.
_MESSAGE, _ENUM, _SERVICE, _METHOD, _FIELD = 4, 5, 6, 2, 2


def comments(proto: FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(loc.path): loc.leading_comments.strip()
        for loc in proto.source_code_info.location
        if loc.leading_comments.strip()
    }


def test_every_rpc_message_and_enum_has_a_comment() -> None:
    proto = FileDescriptorProto.FromString(documented_files()["nats_service.proto"])
    documented = comments(proto)
    service = proto.service[0]
    assert (_SERVICE, 0) in documented
    undocumented = [
        m.name for i, m in enumerate(service.method) if (_SERVICE, 0, _METHOD, i) not in documented
    ]
    undocumented += [
        m.name for i, m in enumerate(proto.message_type) if (_MESSAGE, i) not in documented
    ]
    undocumented += [e.name for i, e in enumerate(proto.enum_type) if (_ENUM, i) not in documented]
    assert not undocumented
    fields = sum(len(m.field) for m in proto.message_type)
    commented = sum(1 for path in documented if len(path) == 4 and path[0] == _MESSAGE)
    assert commented > fields / 2  # non-obvious fields: most of them, in this API


async def test_reflection_serves_the_comments(gateway: Gateway) -> None:
    channel = Channel("127.0.0.1", gateway.port)
    try:
        async with ServerReflectionStub(channel).ServerReflectionInfo.open() as stream:
            await stream.send_message(
                ServerReflectionRequest(file_containing_symbol="isa.nats.NATSService"), end=True
            )
            reply = await stream.recv_message()
    finally:
        channel.close()
    assert reply is not None
    [raw] = reply.file_descriptor_response.file_descriptor_proto
    proto = FileDescriptorProto.FromString(raw)
    publish = [m.name for m in proto.service[0].method].index("Publish")
    assert "confirmed receipt" in comments(proto)[(_SERVICE, 0, _METHOD, publish)]
