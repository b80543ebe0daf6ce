"""The same tour as nats_client_example.py, with natsgw's own client (pip install 'natsgw[client]').

    python examples/natsgw_client_example.py --host 127.0.0.1 --port 50056

Core pub/sub and request/reply, JetStream (stream, consumer, pull + ack, then a consumer that
batches acks for you), Key-Value with compare-and-set and a watch, an object streamed from an
async generator and downloaded to a file. Exit status 0 means every step did what it says.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from natsgw.client import Client, FailedPrecondition, Unavailable, connect


def step(text: str) -> None:
    print(f"  ok  {text}", flush=True)


async def core(client: Client) -> None:
    print("core NATS")
    async with client.subscribe("greetings.*") as sub:  # live once the block is entered
        await client.publish("greetings.en", b"hello", headers={"lang": "en"})
        msg = await anext(sub)
        assert (msg.subject, msg.data, msg.headers["lang"]) == ("greetings.en", b"hello", "en")
        step(f"publish + subscribe: {msg.subject} {msg.data!r}")
        result = await client.publish_batch(
            [("greetings.fr", b"bonjour"), ("greetings.de", b"hallo")]
        )
        got = sorted([(await anext(sub)).data, (await anext(sub)).data])
        assert result.published == 2 and got == [b"bonjour", b"hallo"]
        step("publish_batch: 2 published, 2 received")

    async def responder(ready: asyncio.Event) -> None:
        async with client.subscribe("svc.upper") as requests:
            ready.set()
            async for request in requests:
                await client.publish(request.reply_to, request.data.upper())
                return

    ready = asyncio.Event()
    task = asyncio.create_task(responder(ready))
    await ready.wait()
    reply = await client.request("svc.upper", b"shout", timeout=2)
    await task
    assert reply.data == b"SHOUT"
    step(f"request/reply: {reply.data!r}")
    try:
        await client.request("svc.nobody", timeout=1)
        raise AssertionError("a request nobody answers must fail")
    except Unavailable as exc:
        step(f"request with no responder: {exc}")


async def jetstream(client: Client) -> None:
    print("JetStream")
    await client.create_stream("orders", ["orders.>"])
    step("create_stream orders (orders.>)")
    acks = await client.publish_to_stream_batch(
        "orders", [("orders.new", b"order-%d" % i) for i in range(5)]
    )
    assert [a.sequence for a in acks] == [1, 2, 3, 4, 5]
    step("publish_to_stream_batch x5: sequences 1-5")
    await client.create_consumer("orders", "billing")
    step("create_consumer billing")
    pulled = await client.pull("orders", "billing", 2, max_wait=2)
    assert [m.sequence for m in pulled] == [1, 2]
    assert await client.ack(*pulled) == 2
    step("pull 2 + ack (one call)")
    async with client.consume("orders", "billing", max_messages=10) as messages:
        async for msg in messages:
            msg.ack()  # queued: sent in a batch, and before the block ends
            if msg.sequence == 5:
                break
    info = await client.consumer_info("orders", "billing")
    assert info.state is not None and info.state.ack_floor_seq == 5
    step("consume 3 with batched acks: all 5 acknowledged")
    await client.delete_stream("orders")
    step("delete_stream orders")


async def key_value(client: Client) -> None:
    print("Key-Value")
    revision = await client.kv_put("settings", "app.theme", b"dark")
    entry = await client.kv_get("settings", "app.theme")
    assert entry is not None and entry.value == b"dark"
    step(f"kv_put + kv_get app.theme=dark (revision {revision})")
    async with client.kv_watch("settings", "app.*", updates_only=True) as watch:
        updated = await client.kv_update("settings", "app.theme", b"light", revision)
        try:
            await client.kv_update("settings", "app.theme", b"blue", revision)
            raise AssertionError("a stale compare-and-set must fail")
        except FailedPrecondition:
            step(f"kv_update (CAS) to revision {updated}; stale revision: FailedPrecondition")
        change = await anext(watch)
        assert (change.key, change.value) == ("app.theme", b"light")
        step(f"kv_watch saw {change.key}={change.value.decode()}")
    await client.kv_delete_bucket("settings")
    step("kv_delete_bucket settings")


async def objects(client: Client) -> None:
    print("Object store")
    piece = bytes(range(256)) * 4096  # 1 MiB

    async def produce() -> AsyncIterator[bytes]:  # any async byte stream, of any size
        for _ in range(3):
            yield piece

    info = await client.put_object("files", "report.bin", produce(), metadata={"kind": "demo"})
    step(f"put_object report.bin from an async stream: {info.size} bytes")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "report.bin"
        await client.download("files", "report.bin", target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(piece * 3).hexdigest()
    step("download to a file: content identical")
    assert [o.name for o in await client.objects("files")] == ["report.bin"]
    await client.delete_object("files", "report.bin")
    step("objects + delete_object")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50056)
    parser.add_argument("--user-id", default=f"example-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--token", default="", help="token/jwt mode: bearer credential")
    args = parser.parse_args()
    async with await connect(
        f"{args.host}:{args.port}", user_id="" if args.token else args.user_id, token=args.token
    ) as client:
        health = await client.health()
        print(
            f"gateway at {args.host}:{args.port}: healthy={health.healthy} ({health.nats_status})"
        )
        for area in (core, jetstream, key_value, objects):
            await area(client)
    print("all examples passed")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
