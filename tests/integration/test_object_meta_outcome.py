"""An ObjectPut whose meta record's answer is lost never leaves the object pointing at nothing.

The meta record is the put's commit point. If its PubAck is lost (the call's deadline, a
cancellation, a dropped connection) the record may be stored; purging the new chunks then used to
leave the object unreadable (DATA_LOSS) with its previous version gone. The answer is lost here on
purpose, after a real nats-server stored (or never saw) the record.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from natsgw.adapter.core import NatsAdapter
from natsgw.adapter.objects import ObjectStoreClient
from natsgw.adapter.types import BucketDefaults
from natsgw.errors import DeadlineExceeded
from natsgw.ops.embedded import EmbeddedNatsServer

DEFAULTS = BucketDefaults(history=1, ttl=0.0, max_bytes=1 << 24, storage="memory")


@pytest_asyncio.fixture
async def store(nats_server: EmbeddedNatsServer) -> AsyncIterator[ObjectStoreClient]:
    core = NatsAdapter([nats_server.url])
    await core.start(wait=5)
    yield ObjectStoreClient(core)
    await core.close()


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def content(store: ObjectStoreClient, bucket: str, name: str) -> bytes:
    stat = await store.stat(bucket, name)
    assert stat is not None
    return b"".join([piece async for piece in store.read(bucket, stat)])


def lose_meta_answers(store: ObjectStoreClient, *, send: bool) -> list[str]:
    """The next meta publish raises DeadlineExceeded (after NATS stored it when ``send``)."""
    api: Any = store._api  # fault injection into natsgw's own wrapper; NATS itself stays real
    real = api.publish
    lost: list[str] = []

    async def publish(subject: str, *args: Any, **kwargs: Any) -> Any:
        if ".M." in subject and not lost:
            lost.append(subject)
            if send:
                await real(subject, *args, **kwargs)
            raise DeadlineExceeded("the meta record's answer was lost")
        return await real(subject, *args, **kwargs)

    api.publish = publish
    return lost


@pytest.mark.parametrize("stored_before_loss", [True, False])
async def test_a_put_whose_meta_answer_is_lost_leaves_a_readable_object(
    store: ObjectStoreClient, stored_before_loss: bool
) -> None:
    bucket, name = f"meta-{uuid.uuid4().hex[:8]}", "report.bin"
    old, new = b"o" * 300_000, b"n" * 300_000
    await store.put(bucket, name, one(old), metadata={}, defaults=DEFAULTS, chunk_size=65536)
    before = await store.stat(bucket, name)
    assert before is not None

    lost = lose_meta_answers(store, send=stored_before_loss)
    with pytest.raises(DeadlineExceeded):
        await store.put(bucket, name, one(new), metadata={}, defaults=DEFAULTS, chunk_size=65536)
    assert lost  # the fault really hit the meta write

    # The put's outcome was unknown to its caller; either way the object reads whole, and it is
    # the new version (the repeat of the same record fenced the lost one, or stored it).
    after = await store.stat(bucket, name)
    assert after is not None and after.object_id != before.object_id
    assert await content(store, bucket, name) == new  # read checks size and SHA-256 too
    # The replaced version's chunks are gone: nothing orphaned.
    info: Any = await store._api.stream_info(f"OBJ_{bucket}")
    assert info.state.messages == after.chunks + 1
