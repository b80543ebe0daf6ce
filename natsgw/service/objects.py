"""Object store on NATS JetStream Object Store, inside the caller's namespace.

Unary ``ObjectPut`` / ``ObjectGet`` carry a whole object in one message, so they work up to the
gateway's maximum message size; ``ObjectPutStream`` / ``ObjectGetStream`` move objects of any
size in chunks, with the gateway holding only a few chunks at a time and the SHA-256 digest that
NATS keeps checked on the way in and on the way out.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import cast

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.adapter.objects import ObjectStoreClient
from natsgw.adapter.types import BucketDefaults, ObjectStat
from natsgw.config import Settings
from natsgw.errors import InvalidArgument, NotFound, ResourceExhausted
from natsgw.pipeline.call import Call
from natsgw.tenancy import Namespace, check_object_name

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
#: Bytes of an ObjectGetResponse besides the content and metadata (tags, lengths, found).
_RESPONSE_OVERHEAD = 64


def _info(stat: ObjectStat) -> pb.ObjectInfo:
    return pb.ObjectInfo(
        name=stat.name,
        size=stat.size,
        modified=stat.modified,
        metadata=dict(stat.metadata),
        digest=stat.digest,
        object_id=stat.object_id,
    )


def _check_metadata(metadata: Mapping[str, str], field: str = "metadata") -> None:
    for key in metadata:
        if not key:
            raise InvalidArgument(field, "keys must not be empty")


def _expected_digest(sha256: str) -> bytes | None:
    if not sha256:
        return None
    if not _HEX64.fullmatch(sha256):
        raise InvalidArgument("header.sha256", "must be the content's SHA-256 as 64 hex digits")
    return bytes.fromhex(sha256)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class ObjectStoreService:
    """Object buckets of the caller's namespace."""

    def __init__(self, settings: Settings, adapter: NatsAdapter) -> None:
        self.settings = settings
        self.adapter = adapter
        self.store = ObjectStoreClient(adapter, timeout=settings.request_timeout)

    def _objects(self) -> ObjectStoreClient:
        return self.store

    def _object_defaults(self, call: Call) -> BucketDefaults:
        """What a bucket this call makes is made with (capped by the tenant's byte quota)."""
        s = self.settings
        return BucketDefaults(
            ttl=s.object_ttl,
            max_bytes=call.capped_bytes(s.object_max_bytes),
            storage=str(s.object_storage),
            replicas=s.object_replicas,
        )

    async def _put(
        self,
        call: Call,
        bucket: str,
        name: str,
        content: AsyncIterator[bytes],
        metadata: Mapping[str, str],
        expected_sha256: bytes | None = None,
    ) -> pb.ObjectPutResponse:
        stat = await self._objects().put(
            bucket,
            name,
            content,
            metadata=metadata,
            defaults=self._object_defaults(call),
            chunk_size=self.settings.object_chunk_size,
            expected_sha256=expected_sha256,
            timeout=call.time_left(),
        )
        return pb.ObjectPutResponse(success=True, object_id=stat.object_id, info=_info(stat))

    # -- the original four ------------------------------------------------------------------------

    async def object_put(self, call: Call, message: pb.ObjectPutRequest) -> pb.ObjectPutResponse:
        """A large ``message.data`` is a read-only memoryview into the request (the codec does
        not copy object payloads): only its length is read here, the adapter slices it."""
        ns = call.ns
        bucket = ns.object_bucket(message.bucket)
        check_object_name(message.object_name)
        _check_metadata(message.metadata)
        limit = self.settings.max_message_size
        if len(message.data) > limit:
            # Symmetric with ObjectGet: what one unary call may carry is the message size.
            raise ResourceExhausted(
                f"object {message.object_name!r} is {len(message.data)} bytes, more than ObjectPut "
                f"takes in one message ({limit} bytes, NATSGW_MAX_MESSAGE_SIZE); "
                "use ObjectPutStream"
            )
        return await self._put(
            call, bucket, message.object_name, _one(message.data), message.metadata
        )

    async def _stat(
        self, ns: Namespace, message: pb.ObjectGetRequest
    ) -> tuple[str, ObjectStoreClient, ObjectStat | None]:
        """The caller's bucket, the store, and the object's facts (None when it is missing)."""
        bucket = ns.object_bucket(message.bucket)
        check_object_name(message.object_name)
        objects = self._objects()
        return bucket, objects, await objects.stat(bucket, message.object_name)

    async def object_get(self, call: Call, message: pb.ObjectGetRequest) -> pb.ObjectGetResponse:
        bucket, objects, stat = await self._stat(call.ns, message)
        if stat is None:
            return pb.ObjectGetResponse(found=False)
        limit = self.settings.max_message_size
        meta_bytes = sum(len(k.encode()) + len(v.encode()) + 8 for k, v in stat.metadata.items())
        if stat.size + meta_bytes + _RESPONSE_OVERHEAD > limit:
            raise ResourceExhausted(
                f"object {message.object_name!r} is {stat.size} bytes, more than ObjectGet can "
                f"return in one message ({limit} bytes, NATSGW_MAX_MESSAGE_SIZE); "
                "use ObjectGetStream"
            )
        chunks = [chunk async for chunk in objects.read(bucket, stat)]
        data = b"".join(chunks)  # one copy; the codec appends it to the answer with one more
        del chunks
        return pb.ObjectGetResponse(found=True, data=data, metadata=dict(stat.metadata))

    async def object_delete(
        self, call: Call, message: pb.ObjectDeleteRequest
    ) -> pb.ObjectDeleteResponse:
        """Idempotent: success once the object is gone (also when there was none)."""
        ns = call.ns
        bucket = ns.object_bucket(message.bucket)
        check_object_name(message.object_name)
        await self._objects().delete(bucket, message.object_name)
        return pb.ObjectDeleteResponse(success=True)

    async def object_list(self, call: Call, message: pb.ObjectListRequest) -> pb.ObjectListResponse:
        ns = call.ns
        bucket = ns.object_bucket(message.bucket)
        try:
            stats = await self._objects().list(bucket)
        except NotFound:
            # Not "[]": a caller (natsgw obj ls) must tell a typo from an empty bucket.
            raise NotFound(f"object bucket {message.bucket!r} does not exist") from None
        return pb.ObjectListResponse(objects=[_info(s) for s in stats])

    # -- streaming --------------------------------------------------------------------------------

    async def object_put_stream(
        self,
        call: Call,
        first: pb.ObjectPutStreamRequest,
        messages: AsyncIterator[pb.ObjectPutStreamRequest],
    ) -> pb.ObjectPutResponse:
        """``first`` carries the header (the pipeline checked it is there); chunks follow."""
        header = first.header
        if header is None:
            raise InvalidArgument(
                "header", "the first ObjectPutStream message must carry the header"
            )
        ns = call.ns
        bucket = ns.object_bucket(header.bucket, "header.bucket")
        check_object_name(header.object_name, "header.object_name")
        _check_metadata(header.metadata, "header.metadata")
        expected = _expected_digest(header.sha256)

        async def content() -> AsyncIterator[bytes]:
            yield first.chunk
            index = 1
            async for message in messages:
                if message.header is not None:
                    raise InvalidArgument(
                        "header", f"only the first message may carry it (message {index} did)"
                    )
                yield message.chunk
                index += 1

        return await self._put(
            call, bucket, header.object_name, content(), header.metadata, expected
        )

    async def object_get_stream(
        self, call: Call, message: pb.ObjectGetRequest
    ) -> AsyncGenerator[pb.ObjectGetStreamResponse, None]:
        bucket, objects, stat = await self._stat(call.ns, message)
        if stat is None:
            yield pb.ObjectGetStreamResponse(found=False)
            return
        yield pb.ObjectGetStreamResponse(found=True, info=_info(stat))
        # Closed explicitly: the reader holds a NATS consumer until it is.
        async with contextlib.aclosing(
            cast(AsyncGenerator[bytes, None], objects.read(bucket, stat))
        ) as chunks:
            async for chunk in chunks:
                yield pb.ObjectGetStreamResponse(chunk=chunk)
