"""Key-Value store on NATS JetStream KV, inside the caller's namespace.

Buckets are the tenant's (``ns.kv_bucket``); keys follow NATS's key rules. The original four
calls keep their wire meaning (a missing key or bucket is ``found=false``, ``KVKeys`` of a missing
bucket is empty); the natsgw calls add create-if-absent, compare-and-set, history, a resumable
watch and bucket management.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncGenerator

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.adapter.kv import KeyValueStore
from natsgw.adapter.types import BucketDefaults, KVBucket, KVEntry
from natsgw.config import Settings, SlowConsumerPolicy
from natsgw.errors import InvalidArgument, NotFound, Unavailable
from natsgw.pipeline.call import Call
from natsgw.service.jetstream_wire import MAX_TTL, MIN_TTL, ttl_header
from natsgw.service.subscriptions import Mailbox, SubscriptionRegistry
from natsgw.tenancy import Namespace, check_kv_key, kv_watch_pattern

_OPERATIONS = {
    "PUT": pb.KvOperation.PUT,
    "DEL": pb.KvOperation.DELETE,
    "PURGE": pb.KvOperation.PURGE,
}
_STORAGE_OUT = {
    "file": pb.BucketStorage.FILE,
    "memory": pb.BucketStorage.MEMORY,
}
_STORAGE_IN = {
    pb.BucketStorage.FILE: "file",
    pb.BucketStorage.MEMORY: "memory",
}


def _entry(entry: KVEntry) -> pb.KvEntry:
    return pb.KvEntry(
        key=entry.key,
        value=entry.value,
        revision=entry.revision,
        created=entry.created,
        operation=_OPERATIONS.get(entry.operation, pb.KvOperation.PUT),
        marker_reason=entry.marker_reason,
    )


def _bucket_info(ns: Namespace, bucket: KVBucket) -> pb.KvBucketInfo:
    return pb.KvBucketInfo(
        bucket=ns.from_name(bucket.name) or "",
        values=bucket.values,
        bytes=bucket.bytes,
        history=bucket.history,
        ttl=datetime.timedelta(seconds=bucket.ttl),
        max_bytes=bucket.max_bytes,
        storage=_STORAGE_OUT.get(bucket.storage, pb.BucketStorage.FILE),
        replicas=bucket.replicas,
        created=bucket.created,
        limit_marker_ttl=(
            datetime.timedelta(seconds=bucket.limit_marker_ttl) if bucket.limit_marker_ttl else None
        ),
    )


def _marker_ttl(value: datetime.timedelta | None) -> float:
    """KVCreateBucket's limit_marker_ttl: unset or zero for none, else 1 s to 100 years."""
    seconds = value.total_seconds() if value is not None else 0.0
    if seconds and not MIN_TTL <= seconds <= MAX_TTL:
        raise InvalidArgument(
            "limit_marker_ttl",
            f"must be at least 1s and at most {MAX_TTL:g}s (got {seconds:g}s), or unset for none",
        )
    return seconds


def _revision(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative (got {value})")
    return value


class KeyValueService:
    """Key-Value buckets of the caller's namespace."""

    def __init__(
        self, settings: Settings, adapter: NatsAdapter, subscriptions: SubscriptionRegistry
    ) -> None:
        self.settings = settings
        self.adapter = adapter
        self.subscriptions = subscriptions
        self.store = KeyValueStore(adapter, timeout=settings.request_timeout)
        self._by_cap: dict[int, BucketDefaults] = {}

    def _kv(self) -> KeyValueStore:
        return self.store

    def _defaults(self, call: Call) -> BucketDefaults:
        """What a bucket this call makes is made with (capped by the tenant's byte quota).

        Immutable and the same for every call with the same cap: built once per cap (a put is
        on the data plane; the quota caps take a handful of values)."""
        s = self.settings
        max_bytes = call.capped_bytes(s.kv_max_bytes)
        defaults = self._by_cap.get(max_bytes)
        if defaults is None:
            if len(self._by_cap) >= 1024:
                self._by_cap.clear()
            defaults = self._by_cap[max_bytes] = BucketDefaults(
                history=s.kv_history,
                ttl=s.kv_ttl,
                max_bytes=max_bytes,
                storage=str(s.kv_storage),
                replicas=s.kv_replicas,
            )
        return defaults

    @staticmethod
    def _bucket_and_key(
        ns: Namespace, message: pb.KvPutRequest | pb.KvGetRequest | pb.KvDeleteRequest
    ) -> tuple[Namespace, str, str]:
        bucket = ns.kv_bucket(message.bucket)
        check_kv_key(message.key)
        return ns, bucket, message.key

    # -- the original four ------------------------------------------------------------------------

    async def kv_put(self, call: Call, message: pb.KvPutRequest) -> pb.KvPutResponse:
        _, bucket, key = self._bucket_and_key(call.ns, message)
        self.adapter.check_payload(message.value, {})
        ttl = ttl_header(message.ttl)
        revision = await self._kv().put(
            bucket, key, message.value, self._defaults(call), timeout=call.time_left(), ttl=ttl
        )
        return pb.KvPutResponse(success=True, revision=revision)

    async def kv_get(self, call: Call, message: pb.KvGetRequest) -> pb.KvGetResponse:
        _, bucket, key = self._bucket_and_key(call.ns, message)
        revision = _revision(message.revision, "revision")
        entry = await self._kv().get(bucket, key, revision, timeout=call.time_left())
        if entry is None:
            return pb.KvGetResponse(found=False)
        return pb.KvGetResponse(
            found=True, value=entry.value, revision=entry.revision, created=entry.created
        )

    async def kv_delete(self, call: Call, message: pb.KvDeleteRequest) -> pb.KvDeleteResponse:
        """Idempotent: success once the key has no value (also when there was none)."""
        _, bucket, key = self._bucket_and_key(call.ns, message)
        expected = _revision(message.expected_revision, "expected_revision")
        ttl = ttl_header(message.ttl)
        if ttl and not message.purge:
            raise InvalidArgument(
                "ttl", "only a purge marker can expire (set purge=true, or leave ttl unset)"
            )
        await self._kv().delete(
            bucket, key, expected=expected, purge=message.purge, timeout=call.time_left(), ttl=ttl
        )
        return pb.KvDeleteResponse(success=True)

    async def kv_keys(self, call: Call, message: pb.KvKeysRequest) -> pb.KvKeysResponse:
        ns = call.ns
        bucket = ns.kv_bucket(message.bucket)
        return pb.KvKeysResponse(keys=await self._kv().keys(bucket))

    # -- natsgw additions -------------------------------------------------------------------------

    async def kv_create(self, call: Call, message: pb.KvCreateRequest) -> pb.KvCreateResponse:
        ns = call.ns
        bucket = ns.kv_bucket(message.bucket)
        check_kv_key(message.key)
        self.adapter.check_payload(message.value, {})
        ttl = ttl_header(message.ttl)
        revision = await self._kv().create(
            bucket,
            message.key,
            message.value,
            self._defaults(call),
            timeout=call.time_left(),
            ttl=ttl,
        )
        return pb.KvCreateResponse(success=True, revision=revision)

    async def kv_update(self, call: Call, message: pb.KvUpdateRequest) -> pb.KvUpdateResponse:
        ns = call.ns
        bucket = ns.kv_bucket(message.bucket)
        check_kv_key(message.key)
        if message.expected_revision < 1:
            raise InvalidArgument(
                "expected_revision",
                f"must be at least 1 (got {message.expected_revision}); "
                "use KVCreate for a key that must not exist yet",
            )
        self.adapter.check_payload(message.value, {})
        revision = await self._kv().update(
            bucket, message.key, message.value, message.expected_revision, timeout=call.time_left()
        )
        return pb.KvUpdateResponse(success=True, revision=revision)

    async def kv_history(self, call: Call, message: pb.KvHistoryRequest) -> pb.KvHistoryResponse:
        ns = call.ns
        bucket = ns.kv_bucket(message.bucket)
        check_kv_key(message.key)
        entries = await self._kv().history(bucket, message.key)
        return pb.KvHistoryResponse(entries=[_entry(e) for e in entries])

    async def kv_watch(
        self, call: Call, message: pb.KvWatchRequest
    ) -> AsyncGenerator[pb.KvEntry, None]:
        ns = call.ns
        bucket = ns.kv_bucket(message.bucket)
        pattern = kv_watch_pattern(message.key)
        from_revision = _revision(message.from_revision, "from_revision")
        try:
            watch = await self._kv().watch(
                bucket, pattern, from_revision=from_revision, updates_only=message.updates_only
            )
        except NotFound:
            raise NotFound(f"bucket {message.bucket!r} does not exist") from None
        # Registered like a subscription stream, so gateway shutdown ends it first (with a status
        # that says where to resume) instead of cutting it. The key holds spaces, which no
        # Unsubscribe subject can, so only shutdown reaches it.
        stop = Mailbox(1, 1, SlowConsumerPolicy.CLOSE)
        registry_key = f"KVWatch {message.bucket} {pattern}"
        registry = self.subscriptions
        registry.add(ns.key, registry_key, stop)
        stopped = asyncio.ensure_future(stop.get())
        last = from_revision - 1 if from_revision else 0
        following: asyncio.Future[KVEntry] | None = None
        try:
            await call.ready()
            while True:
                following = asyncio.ensure_future(anext(watch))
                await asyncio.wait({following, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    await asyncio.gather(following, return_exceptions=True)
                    resume = f"; resume with from_revision={last + 1}" if last else ""
                    raise Unavailable(f"the gateway is shutting down{resume}")
                entry = following.result()
                last = entry.revision
                yield _entry(entry)
        except NotFound:
            raise NotFound(f"bucket {message.bucket!r} was deleted") from None
        finally:
            registry.remove(ns.key, registry_key, stop)
            stopped.cancel()
            if following is not None and not following.done():
                # The call ended (client cancelled) while waiting: the read must end with it,
                # not live on as an orphan task that fails later with nobody to retrieve it.
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
            await watch.close()

    async def kv_create_bucket(
        self, call: Call, message: pb.KvCreateBucketRequest
    ) -> pb.KvCreateBucketResponse:
        ns = call.ns
        bucket = ns.kv_bucket(message.bucket)
        defaults = self._defaults(call)
        history = message.history or defaults.history
        if not 1 <= history <= 64:
            raise InvalidArgument("history", f"must be from 1 to 64 (got {history})")
        ttl = defaults.ttl
        if message.ttl is not None and message.ttl != datetime.timedelta(0):
            ttl = message.ttl.total_seconds()
            if ttl < 0:
                raise InvalidArgument("ttl", f"must not be negative (got {ttl:g}s)")
        if message.max_bytes < 0:
            raise InvalidArgument("max_bytes", f"must not be negative (got {message.max_bytes})")
        replicas = message.replicas or defaults.replicas
        if not 1 <= replicas <= 5:
            raise InvalidArgument("replicas", f"must be from 1 to 5 (got {replicas})")
        created = await self._kv().create_bucket(
            bucket,
            BucketDefaults(
                history=history,
                ttl=ttl,
                max_bytes=message.max_bytes or defaults.max_bytes,
                storage=_STORAGE_IN.get(message.storage, defaults.storage),
                replicas=replicas,
                limit_marker_ttl=_marker_ttl(message.limit_marker_ttl),
            ),
        )
        return pb.KvCreateBucketResponse(success=True, bucket=_bucket_info(ns, created))

    async def kv_delete_bucket(
        self, call: Call, message: pb.KvDeleteBucketRequest
    ) -> pb.KvDeleteBucketResponse:
        ns = call.ns
        bucket = ns.kv_bucket(message.bucket)
        try:
            await self._kv().delete_bucket(bucket)
        except NotFound:
            raise NotFound(f"bucket {message.bucket!r} does not exist") from None
        return pb.KvDeleteBucketResponse(success=True)

    async def kv_list_buckets(
        self, call: Call, message: pb.KvListBucketsRequest
    ) -> pb.KvListBucketsResponse:
        ns = call.ns
        buckets = await self._kv().list_buckets(lambda name: ns.from_name(name) is not None)
        return pb.KvListBucketsResponse(buckets=[_bucket_info(ns, b) for b in buckets])

    async def kv_bucket_status(
        self, call: Call, message: pb.KvBucketStatusRequest
    ) -> pb.KvBucketStatusResponse:
        ns = call.ns
        bucket = ns.kv_bucket(message.bucket)
        try:
            info = await self._kv().bucket(bucket)
        except NotFound:
            raise NotFound(f"bucket {message.bucket!r} does not exist") from None
        return pb.KvBucketStatusResponse(bucket=_bucket_info(ns, info))
