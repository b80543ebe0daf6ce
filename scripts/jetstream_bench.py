"""Measure JetStream through a running gateway: unary vs batched publish, pull + ack, Consume.

Starts ``natsgw serve`` as a subprocess (with its embedded nats-server unless ``--nats-url`` is
given) and prints messages per second for:

- ``PublishToStream``, one call at a time and ``--concurrency`` calls in flight;
- ``PublishToStreamBatch`` with ``--batch`` messages per call;
- ``PullMessages`` (``--batch`` per call) + ``AckMessages`` (all tokens of a pull in one call);
- ``Consume`` with a window of ``--window`` messages, acked with ``AckMessages`` as they arrive.

    python scripts/jetstream_bench.py --messages 20000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time

from _gateway import running_gateway  # scripts/ is on sys.path when a script runs
from grpclib.client import Channel

from natsgw._generated.isa import nats as pb


async def wait_ready(stub: pb.NatsServiceStub) -> None:
    for _ in range(200):
        try:
            response = await stub.health_check(pb.NatsHealthCheckRequest())
            if response.healthy:
                return
        except (OSError, ConnectionError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become healthy")


def report(name: str, count: int, seconds: float) -> None:
    print(f"{name:<48} {count:>7} msgs {seconds:7.2f} s {count / seconds:10.0f} msg/s")


async def bench(args: argparse.Namespace, port: int) -> None:
    channel = Channel("127.0.0.1", port)
    stub = pb.NatsServiceStub(channel)
    user, n, payload = args.user, args.messages, b"x" * args.size
    try:
        await wait_ready(stub)
        await stub.create_stream(
            pb.CreateStreamRequest(
                user_id=user,
                config=pb.StreamConfig(
                    name="bench", subjects=["bench.>"], storage=pb.StorageType.STORAGE_MEMORY
                ),
            )
        )

        def request(i: int) -> pb.PublishToStreamRequest:
            return pb.PublishToStreamRequest(
                user_id=user, stream_name="bench", subject=f"bench.{i % 16}", data=payload
            )

        small = min(n, 2000)
        started = time.perf_counter()
        for i in range(small):
            await stub.publish_to_stream(request(i))
        report("PublishToStream, sequential", small, time.perf_counter() - started)

        limit = asyncio.Semaphore(args.concurrency)

        async def one(i: int) -> None:
            async with limit:
                await stub.publish_to_stream(request(i))

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        report(f"PublishToStream, {args.concurrency} in flight", n, time.perf_counter() - started)

        started = time.perf_counter()
        for first in range(0, n, args.batch):
            response = await stub.publish_to_stream_batch(
                pb.PublishToStreamBatchRequest(
                    user_id=user,
                    stream_name="bench",
                    messages=[
                        pb.StreamMessage(subject=f"bench.{i % 16}", data=payload)
                        for i in range(first, min(first + args.batch, n))
                    ],
                )
            )
            assert response.published_count == len(response.results)
        report(f"PublishToStreamBatch, {args.batch} per call", n, time.perf_counter() - started)

        await stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=user, stream_name="bench", config=pb.ConsumerConfig(durable_name="pull")
            )
        )
        started = time.perf_counter()
        got = 0
        while got < n:
            pulled = await stub.pull_messages(
                pb.PullMessagesRequest(
                    user_id=user,
                    stream_name="bench",
                    consumer_name="pull",
                    batch_size=args.batch,
                    max_wait=datetime.timedelta(seconds=1),
                )
            )
            tokens = [m.ack_token for m in pulled.messages]
            acked = await stub.ack_messages(pb.AckMessagesRequest(user_id=user, ack_tokens=tokens))
            assert acked.succeeded == len(tokens)
            got += len(tokens)
        report(f"PullMessages {args.batch} + AckMessages", got, time.perf_counter() - started)

        await stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=user, stream_name="bench", config=pb.ConsumerConfig(durable_name="push")
            )
        )
        started = time.perf_counter()
        got = 0
        pending: list[str] = []
        acks: list[asyncio.Task[pb.AckMessagesResponse]] = []
        consume = pb.ConsumeRequest(
            user_id=user, stream_name="bench", consumer_name="push", max_messages=args.window
        )
        async for response in stub.consume(consume):
            if response.message is None:
                continue
            got += 1
            pending.append(response.message.ack_token)
            if len(pending) >= args.window // 2 or got == n:
                acks.append(
                    asyncio.create_task(
                        stub.ack_messages(pb.AckMessagesRequest(user_id=user, ack_tokens=pending))
                    )
                )
                pending = []
            if got >= n:
                break
        await asyncio.gather(*acks)
        report(f"Consume window {args.window} + AckMessages", got, time.perf_counter() - started)
        await stub.delete_stream(pb.DeleteStreamRequest(user_id=user, stream_name="bench"))
    finally:
        channel.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=128, help="payload bytes")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--nats-url", default="", help="use this nats-server, not an embedded one")
    parser.add_argument("--user", default="bench-user")
    args = parser.parse_args()

    async with running_gateway(args.nats_url, "natsgw-jsbench-") as (port, _):
        await bench(args, port)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
