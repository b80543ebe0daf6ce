"""The ordered reader holds a few messages whatever the stream holds (issue 12 point 7).

Flow control alone let nats-server run up to 32 MiB ahead of a reader into nats-py's queue; the
reader's ``window`` caps what the server may have sent and the caller not yet taken.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
from nats.js import api

from natsgw.adapter.core import NatsAdapter
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.adapter.ordered import OrderedReader
from natsgw.ops.embedded import EmbeddedNatsServer

CHUNK = 64 * 1024


async def test_server_sends_at_most_the_window_ahead_and_nothing_is_lost(
    nc: nats.NATS, nats_server: EmbeddedNatsServer
) -> None:
    core = NatsAdapter([nats_server.url])
    await core.start(wait=5)
    js = nc.jetstream()
    name = f"WIN_{uuid.uuid4().hex[:10]}"
    subject = f"win.{name}"
    await js.add_stream(
        api.StreamConfig(name=name, subjects=[subject], storage=api.StorageType.MEMORY)
    )
    try:
        for index in range(200):  # 12.5 MiB: far more than the window
            await js.publish(subject, index.to_bytes(4, "big") * (CHUNK // 4))
        reader = OrderedReader(JetStreamAdapter(core), name, subject, window=8)
        await reader.open()
        try:
            first = await reader.next()
            await asyncio.sleep(0.5)  # let the server send all it is allowed to
            (consumer,) = await js.consumers_info(name)
            assert consumer.delivered is not None
            assert consumer.delivered.consumer_seq <= 1 + 8, consumer.delivered
            seqs = [first.seq]
            for _ in range(199):
                msg = await reader.next()
                assert msg.data[:4] == (msg.seq - 1).to_bytes(4, "big")
                seqs.append(msg.seq)
            assert seqs == list(range(1, 201))
        finally:
            await reader.close()
    finally:
        await js.delete_stream(name)
        await core.close()
