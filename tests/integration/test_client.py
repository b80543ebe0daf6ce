"""natsgw.client against a real gateway on a real nats-server: every area, errors, credentials."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
import pytest_asyncio

from natsgw.client import (
    AckPolicy,
    AlreadyExists,
    Client,
    ConsumerConfig,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    KvOperation,
    NotFound,
    StreamConfig,
    Unauthenticated,
    Unavailable,
    connect,
)
from natsgw.config import AuthMode
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import settled, tenant, wait_for
from tests.integration._security import make_pki

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest_asyncio.fixture
async def client(gateway: Gateway) -> AsyncIterator[Client]:
    async with await connect(f"127.0.0.1:{gateway.port}", user_id=tenant()) as c:
        yield c


async def test_publish_subscribe_batch_and_request(client: Client) -> None:
    async with client.subscribe("orders.*") as sub:
        await client.publish("orders.new", b"1", headers={"k": "v"})
        result = await client.publish_batch([("orders.new", b"2"), ("", b"bad")])
        assert (result.published, len(result.errors), result.ok) == (1, 1, False)
        first = await anext(sub)
        second = await anext(sub)
    assert (first.subject, first.data, first.headers, first.sequence) == (
        "orders.new",
        b"1",
        {"k": "v"},
        1,
    )
    assert second.data == b"2"

    async def responder() -> None:
        async with client.subscribe("svc.upper") as requests:
            ready.set()
            async for msg in requests:
                await client.publish(msg.reply_to, msg.data.upper(), headers={"by": "responder"})
                return

    ready = asyncio.Event()
    task = asyncio.create_task(responder())
    await ready.wait()
    reply = await client.request("svc.upper", b"abc", timeout=2)
    assert (reply.data, reply.headers) == (b"ABC", {"by": "responder"})
    await task

    with pytest.raises(Unavailable, match="no responder"):
        await client.request("svc.nobody", b"", timeout=1)


async def test_errors_are_typed_and_carry_the_status(gateway: Gateway, client: Client) -> None:
    anonymous = Client(f"127.0.0.1:{gateway.port}")
    with pytest.raises(Unauthenticated) as info:
        await anonymous.publish("x", b"")
    assert info.value.status.name == "UNAUTHENTICATED" and "user_id" in info.value.message
    anonymous.close()
    with pytest.raises(InvalidArgument):
        await client.publish("a.>", b"")
    with pytest.raises(NotFound):
        await client.stream_info("missing")
    await client.kv_create("b", "k", b"1")
    with pytest.raises(AlreadyExists):
        await client.kv_create("b", "k", b"2")
    async with client.subscribe("slow.svc"):
        with pytest.raises(DeadlineExceeded):
            await client.request("slow.svc", b"", timeout=0.3)


async def test_connect_fails_fast_when_nothing_listens() -> None:
    with pytest.raises(Unavailable):
        await connect("127.0.0.1:1")


async def test_subscribe_hands_out_batched_responses_one_message_at_a_time(
    client: Client,
) -> None:
    burst = [("feed.x", b"%04d" % i + b"." * 1020) for i in range(300)]
    async with client.subscribe("feed.*", max_batch=50) as raw:
        assert (await client.publish_batch(burst)).published == 300
        # 300 KiB outruns HTTP/2's 64 KiB window: the gateway holds messages, so they ride together.
        responses, got = 0, 0
        while got < 300:
            response = await raw.next_response()
            assert response is not None and len(response.batch) < 50
            responses, got = responses + 1, got + 1 + len(response.batch)
    assert got == 300 and responses < 300
    async with client.subscribe("feed.*", max_batch=50) as sub:
        assert (await client.publish_batch(burst)).published == 300
        seen = [await anext(sub) for _ in range(300)]
    assert [m.data for m in seen] == [data for _, data in burst]
    assert [m.sequence for m in seen] == list(range(1, 301))


async def test_jetstream_consume_batches_acks_and_flow_control(client: Client) -> None:
    await client.create_stream("jobs", ["jobs.>"])
    acks = await client.publish_to_stream_batch("jobs", [("jobs.a", b"%d" % i) for i in range(60)])
    assert [a.sequence for a in acks] == list(range(1, 61))
    first = await client.publish_to_stream("jobs.a", b"x", stream="jobs", msg_id="m1")
    again = await client.publish_to_stream("jobs.a", b"x", stream="jobs", msg_id="m1")
    assert again.duplicate and again.sequence == first.sequence == 61
    await client.create_consumer("jobs", "worker")

    seen: list[int] = []
    async with client.consume("jobs", "worker", max_messages=10, ack_interval=0.02) as messages:
        async for msg in messages:
            assert messages.batcher.outstanding <= 10  # the gateway's window bounds deliveries
            seen.append(msg.sequence)
            msg.ack()
            if len(seen) == 61:
                break
        batcher = messages.batcher
    assert seen == list(range(1, 62))
    assert batcher.settled == 61 and batcher.failed == 0  # queued acks were sent before closing
    info = await client.consumer_info("jobs", "worker")
    assert info.state is not None and info.state.ack_floor_seq == 61
    assert info.state.num_pending == 0


async def test_consumer_extends_the_ack_deadline_of_a_slow_handler(client: Client) -> None:
    await client.create_stream("slow", ["slow.>"])
    await client.publish_to_stream("slow.a", b"work", stream="slow")
    await client.create_consumer(
        "slow",
        "w",
        config=ConsumerConfig(
            ack_policy=AckPolicy.ACK_EXPLICIT, ack_wait=datetime.timedelta(seconds=1)
        ),
    )
    async with client.consume("slow", "w") as messages:
        msg = await anext(messages)
        await asyncio.sleep(2.6)  # well past ack_wait: without extension NATS redelivers
        msg.ack()
        assert messages.batcher.extended >= 2
    info = await client.consumer_info("slow", "w")
    assert info.state is not None
    assert (info.state.num_redelivered, info.state.ack_floor_seq) == (0, 1)


async def test_pull_and_explicit_ack(client: Client) -> None:
    await client.create_stream("pulled", ["p.*"], config=StreamConfig(max_msgs=100))
    await client.publish_to_stream("p.x", b"1", stream="pulled")
    await client.create_consumer("pulled", "c")
    [msg] = await client.pull("pulled", "c", 5, max_wait=1)
    with pytest.raises(RuntimeError, match=r"client\.ack"):
        msg.ack()
    assert await client.ack(msg) == 1
    assert await client.pull("pulled", "c", 5, max_wait=0.2) == []
    assert [s.name for s in await client.streams()] == ["pulled"]
    await client.delete_stream("pulled")
    assert await client.streams() == []


async def test_kv_put_get_cas_and_watch(client: Client) -> None:
    rev = await client.kv_put("cfg", "app.color", b"red")
    entry = await client.kv_get("cfg", "app.color")
    assert entry is not None and (entry.value, entry.revision) == (b"red", rev)
    assert await client.kv_get("cfg", "missing") is None
    rev2 = await client.kv_update("cfg", "app.color", b"blue", rev)
    with pytest.raises(FailedPrecondition):
        await client.kv_update("cfg", "app.color", b"green", rev)  # stale revision
    async with client.kv_watch("cfg", "app.*") as watch:
        current = await anext(watch)
        assert (current.key, current.value, current.revision) == ("app.color", b"blue", rev2)
        await client.kv_delete("cfg", "app.color")
        deleted = await anext(watch)
        assert deleted.operation is KvOperation.DELETE
    assert await client.kv_keys("cfg") == []


async def test_objects_from_async_streams_and_files(client: Client, tmp_path: Path) -> None:
    piece = bytes(range(256)) * 4096  # 1 MiB

    async def produce() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield piece

    info = await client.put_object("files", "big.bin", produce(), metadata={"kind": "test"})
    expected = hashlib.sha256(piece * 5).hexdigest()
    assert info.size == 5 * len(piece)
    out = tmp_path / "big.out"
    got = await client.download("files", "big.bin", out)
    assert got.metadata == {"kind": "test"}
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected

    source = tmp_path / "small.txt"
    source.write_bytes(b"hello object")
    await client.put_object(
        "files", "small.txt", source, sha256=hashlib.sha256(b"hello object").hexdigest()
    )
    assert await client.get_object_bytes("files", "small.txt") == b"hello object"
    await client.put_object("files", "empty", b"")
    assert await client.get_object_bytes("files", "empty") == b""
    assert sorted(o.name for o in await client.objects("files")) == [
        "big.bin",
        "empty",
        "small.txt",
    ]
    await client.delete_object("files", "small.txt")
    with pytest.raises(NotFound):
        await client.get_object_bytes("files", "small.txt")
    assert not list(tmp_path.glob("*.part"))  # noqa: ASYNC240 - a test assertion


async def test_token_credentials_and_organization_scope(
    make_gateway: GatewayFactory, tmp_path: Path, nc: nats.NATS
) -> None:
    alice, org, token = tenant("alice"), tenant("org"), "tok-" + "a" * 30
    path = tmp_path / "tokens.json"
    path.write_text(
        json.dumps({"tokens": [{"token": token, "user_id": alice, "organizations": [org]}]})
    )
    gw = await make_gateway(auth_mode=AuthMode.TOKEN, auth_tokens_file=path)
    target = f"127.0.0.1:{gw.port}"
    with pytest.raises(Unauthenticated):
        await Client(target, token="wrong-" + "x" * 30).publish("a", b"")
    async with Client(target, token=token) as client:
        sub = await nc.subscribe(Namespace(Tenant.organization(org)).subject("team.news"))
        await settled(nc)
        await client.in_organization(org).publish("team.news", b"for the team")
        assert (await sub.next_msg(timeout=2)).data == b"for the team"


async def test_mutual_tls_with_a_client_certificate(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    gw = await make_gateway(
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca_cert,
    )
    target = f"localhost:{gw.port}"
    async with await connect(
        target,
        user_id=tenant(),
        ca_file=pki.ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
    ) as client:
        await client.publish("over.mtls", b"x")
    with pytest.raises(Unavailable):  # no client certificate: the handshake is refused
        await connect(target, user_id=tenant(), ca_file=pki.ca_cert, timeout=3)


async def test_leaving_a_subscription_ends_it_on_the_gateway(
    gateway: Gateway, client: Client
) -> None:
    before = gateway.subscriptions.active
    async with client.subscribe("bye.*"):
        await wait_for(lambda: gateway.subscriptions.active == before + 1)
    await wait_for(lambda: gateway.subscriptions.active == before)
