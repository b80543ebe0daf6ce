"""Every area of natsgw through plain grpcio, with stubs generated from api/.

Generate the stubs once (grpcio-tools), then run against a gateway:

    pip install grpcio grpcio-tools
    python -m grpc_tools.protoc -Iapi --python_out=examples --grpc_python_out=examples \
        api/nats_service.proto
    python examples/nats_client_example.py --host 127.0.0.1 --port 50056

It walks core pub/sub and request/reply, a JetStream stream with a consumer (pull + ack, then
Consume + batched acks), Key-Value with compare-and-set and a watch, and an object streamed up and
down; everything it makes is deleted at the end. Exit status 0 means every step did what it says.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))  # stubs generated next to this file
try:
    import nats_service_pb2 as pb
    import nats_service_pb2_grpc as pb_grpc
except ImportError:
    sys.exit(
        "nats_service_pb2 not found: generate it first with\n"
        "  python -m grpc_tools.protoc -Iapi --python_out=examples --grpc_python_out=examples "
        "api/nats_service.proto"
    )


def step(text: str) -> None:
    print(f"  ok  {text}", flush=True)


async def core(stub: Any, user: str) -> None:
    print("core NATS")
    sub = stub.Subscribe(pb.SubscribeRequest(user_id=user, subject="greetings.*"))
    await sub.initial_metadata()  # sent once the subscription exists: safe to publish now
    await stub.Publish(
        pb.PublishRequest(
            user_id=user, subject="greetings.en", data=b"hello", headers={"lang": "en"}
        )
    )
    msg = await sub.read()
    assert (msg.subject, msg.data, msg.headers["lang"]) == ("greetings.en", b"hello", "en")
    step(f"Publish + Subscribe: {msg.subject} {msg.data!r}")
    batch = await stub.PublishBatch(
        pb.PublishBatchRequest(
            user_id=user,
            messages=[
                pb.NATSMessage(subject="greetings.fr", data=b"bonjour"),
                pb.NATSMessage(subject="greetings.de", data=b"hallo"),
            ],
        )
    )
    assert batch.published_count == 2
    got = sorted([(await sub.read()).data, (await sub.read()).data])
    assert got == [b"bonjour", b"hallo"]
    step("PublishBatch: 2 published, 2 received")
    sub.cancel()

    # Request/reply: a responder is just another subscriber that publishes to reply_to.
    responder = stub.Subscribe(pb.SubscribeRequest(user_id=user, subject="svc.upper"))
    await responder.initial_metadata()

    async def answer() -> None:
        request = await responder.read()
        await stub.Publish(
            pb.PublishRequest(user_id=user, subject=request.reply_to, data=request.data.upper())
        )

    task = asyncio.create_task(answer())
    reply = await stub.Request(
        pb.RequestRequest(user_id=user, subject="svc.upper", data=b"shout", timeout={"seconds": 2})
    )
    await task
    responder.cancel()
    assert reply.data == b"SHOUT"
    step(f"Request/reply: {reply.data!r}")
    try:
        await stub.Request(
            pb.RequestRequest(user_id=user, subject="svc.nobody", timeout={"seconds": 1})
        )
        raise AssertionError("a request nobody answers must fail")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE
        step(f"Request with no responder: {exc.code().name} ({exc.details()})")


async def jetstream(stub: Any, user: str) -> None:
    print("JetStream")
    await stub.CreateStream(
        pb.CreateStreamRequest(
            user_id=user, config=pb.StreamConfig(name="orders", subjects=["orders.>"])
        )
    )
    step("CreateStream orders (orders.>)")
    for i in range(5):
        ack = await stub.PublishToStream(
            pb.PublishToStreamRequest(
                user_id=user, stream_name="orders", subject="orders.new", data=b"order-%d" % i
            )
        )
    assert ack.sequence == 5
    step("PublishToStream x5: last sequence 5")
    await stub.CreateConsumer(
        pb.CreateConsumerRequest(
            user_id=user, stream_name="orders", config=pb.ConsumerConfig(durable_name="billing")
        )
    )
    step("CreateConsumer billing (durable, explicit ack)")
    pulled = await stub.PullMessages(
        pb.PullMessagesRequest(
            user_id=user,
            stream_name="orders",
            consumer_name="billing",
            batch_size=2,
            max_wait={"seconds": 2},
        )
    )
    assert [m.sequence for m in pulled.messages] == [1, 2]
    for m in pulled.messages:
        await stub.AckMessage(pb.AckMessageRequest(user_id=user, ack_token=m.ack_token))
    step("PullMessages 2 + AckMessage each")

    consume = stub.Consume(
        pb.ConsumeRequest(
            user_id=user, stream_name="orders", consumer_name="billing", max_messages=10
        )
    )
    tokens: list[str] = []
    async for response in consume:
        if response.HasField("message"):
            tokens.append(response.message.ack_token)
        if len(tokens) == 3:
            break
    consume.cancel()
    acked = await stub.AckMessages(pb.AckMessagesRequest(user_id=user, ack_tokens=tokens))
    assert acked.succeeded == 3
    step("Consume 3 + AckMessages (one call)")
    info = await stub.GetConsumerInfo(
        pb.GetConsumerInfoRequest(user_id=user, stream_name="orders", consumer_name="billing")
    )
    assert info.consumer.state.ack_floor_seq == 5 and info.consumer.state.num_pending == 0
    step("GetConsumerInfo: all 5 acknowledged")
    await stub.DeleteStream(pb.DeleteStreamRequest(user_id=user, stream_name="orders"))
    step("DeleteStream orders")


async def key_value(stub: Any, user: str) -> None:
    print("Key-Value")
    put = await stub.KVPut(
        pb.KVPutRequest(user_id=user, bucket="settings", key="app.theme", value=b"dark")
    )  # the first put makes the bucket
    watch = stub.KVWatch(
        pb.KVWatchRequest(user_id=user, bucket="settings", key="app.*", updates_only=True)
    )
    await watch.initial_metadata()  # the watch is live
    got = await stub.KVGet(pb.KVGetRequest(user_id=user, bucket="settings", key="app.theme"))
    assert got.found and got.value == b"dark"
    step(f"KVPut + KVGet app.theme=dark (revision {put.revision})")
    updated = await stub.KVUpdate(
        pb.KVUpdateRequest(
            user_id=user,
            bucket="settings",
            key="app.theme",
            value=b"light",
            expected_revision=put.revision,
        )
    )
    try:
        await stub.KVUpdate(
            pb.KVUpdateRequest(
                user_id=user,
                bucket="settings",
                key="app.theme",
                value=b"blue",
                expected_revision=put.revision,
            )
        )
        raise AssertionError("a stale compare-and-set must fail")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION
    step(f"KVUpdate (CAS) to revision {updated.revision}; stale revision: FAILED_PRECONDITION")
    change = await watch.read()
    assert (change.key, change.value) == ("app.theme", b"light")
    step(f"KVWatch saw {change.key}={change.value.decode()}")
    watch.cancel()
    await stub.KVDeleteBucket(pb.KVDeleteBucketRequest(user_id=user, bucket="settings"))
    step("KVDeleteBucket settings")


async def objects(stub: Any, user: str) -> None:
    print("Object store")
    content = bytes(range(256)) * 8192  # 2 MiB, sent in 256 KiB chunks

    async def upload() -> AsyncIterator[Any]:
        yield pb.ObjectPutStreamRequest(
            header=pb.ObjectPutHeader(
                user_id=user,
                bucket="files",
                object_name="report.bin",
                sha256=hashlib.sha256(content).hexdigest(),
            )
        )
        for start in range(0, len(content), 256 * 1024):
            yield pb.ObjectPutStreamRequest(chunk=content[start : start + 256 * 1024])

    stored = await stub.ObjectPutStream(upload())
    step(f"ObjectPutStream report.bin: {stored.info.size} bytes, {stored.info.digest}")
    received = bytearray()
    async for part in stub.ObjectGetStream(
        pb.ObjectGetRequest(user_id=user, bucket="files", object_name="report.bin")
    ):
        received += part.chunk
    assert bytes(received) == content
    step("ObjectGetStream: content identical")
    listed = await stub.ObjectList(pb.ObjectListRequest(user_id=user, bucket="files"))
    assert [o.name for o in listed.objects] == ["report.bin"]
    await stub.ObjectDelete(
        pb.ObjectDeleteRequest(user_id=user, bucket="files", object_name="report.bin")
    )
    step("ObjectList + ObjectDelete")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50056)
    parser.add_argument(
        "--user-id",
        default=f"example-{uuid.uuid4().hex[:8]}",
        help="trusted mode: who you are (default: a fresh id)",
    )
    parser.add_argument("--token", default="", help="token/jwt mode: bearer credential")
    args = parser.parse_args()
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    user = "" if args.token else args.user_id
    async with grpc.aio.insecure_channel(f"{args.host}:{args.port}") as channel:
        stub = pb_grpc.NATSServiceStub(channel)
        if metadata:
            stub = _WithMetadata(stub, metadata)
        health = await stub.HealthCheck(pb.NATSHealthCheckRequest())
        print(
            f"gateway at {args.host}:{args.port}: healthy={health.healthy} ({health.nats_status})"
        )
        for area in (core, jetstream, key_value, objects):
            await area(stub, user)
    print("all examples passed")
    return 0


class _WithMetadata:
    """Adds the bearer token to every call of a generated grpcio stub."""

    def __init__(self, stub: Any, metadata: Any) -> None:
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        return lambda *args, **kwargs: method(*args, metadata=self._metadata, **kwargs)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
