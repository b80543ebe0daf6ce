"""NATS JetStream Key-Value, in plain values.

Takes NATS bucket names (already mapped by natsgw.tenancy) and validated keys. Values are written
and read with JetStream's own primitives (publish with expected-sequence headers, direct get,
ordered consumers) on the standard ``KV_<bucket>`` stream and ``$KV.<bucket>.<key>`` subjects, so
buckets stay fully compatible with every NATS client and the ``nats kv`` CLI. Everything goes
through the adapter's one JetStream client; the bucket's stream config is the one nats-py's
``create_key_value`` makes (tests/unit/test_bucket_configs.py compares them).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from natsgw.adapter.core import NatsAdapter
from natsgw.adapter.errors import NoStream, WrongLastSequence, translated
from natsgw.adapter.jetstream import Budget, JetStreamAdapter, TTLDisabled
from natsgw.adapter.ordered import OrderedReader, Start, StoredMessage
from natsgw.adapter.types import BucketDefaults, KVBucket, KVEntry, StreamDetails
from natsgw.errors import AlreadyExists, FailedPrecondition, GatewayError, NotFound

KV_OP = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_ROLLUP = "Nats-Rollup"
_TTL = "Nats-TTL"
_DUPLICATE_WINDOW = 120.0
_NS = 1_000_000_000


def stream_name(bucket: str) -> str:
    return f"KV_{bucket}"


def _subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def bucket_config(bucket: str, defaults: BucketDefaults) -> dict[str, Any]:
    """The ``KV_<bucket>`` stream exactly as nats-py's ``create_key_value`` configures it
    (``KeyValueConfig(direct=True)``): history as messages per subject, rollups, no deletes,
    direct get, per-message TTLs, a duplicate window of 2 minutes or the TTL if shorter."""
    ttl = defaults.ttl or 0.0
    window = ttl if 0 < ttl < _DUPLICATE_WINDOW else _DUPLICATE_WINDOW
    config = {
        "name": stream_name(bucket),
        "subjects": [f"$KV.{bucket}.>"],
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": defaults.max_bytes or -1,
        "discard": "new",
        "discard_new_per_subject": False,
        "max_msgs_per_subject": defaults.history,
        "storage": defaults.storage,
        "num_replicas": defaults.replicas,
        "no_ack": False,
        "duplicate_window": int(window * _NS),
        "sealed": False,
        "deny_delete": True,
        "deny_purge": False,
        "allow_rollup_hdrs": True,
        "allow_direct": True,
        "allow_msg_ttl": True,
        "max_age": int(ttl * _NS),
    }
    if defaults.limit_marker_ttl:  # as nats.go's KeyValueConfig.LimitMarkerTTL sets it
        config["subject_delete_marker_ttl"] = int(defaults.limit_marker_ttl * _NS)
    return config


@contextlib.contextmanager
def _ttl_refusal(bucket: str) -> Iterator[None]:
    """A TTL on a bucket made without per-message TTLs (before nats-server 2.11 or by a client
    that leaves them off) is FAILED_PRECONDITION saying what to do."""
    try:
        yield
    except TTLDisabled:
        raise FailedPrecondition(
            f"bucket {bucket} was created without per-message TTLs (its stream's allow_msg_ttl "
            "is off); write without ttl, or copy the keys into a new bucket (buckets natsgw "
            "creates allow TTLs)"
        ) from None


def operation_of(headers: Mapping[str, str]) -> str:
    """PUT, DEL or PURGE, from a stored message's headers (server markers included)."""
    op = headers.get(KV_OP)
    if op in ("DEL", "PURGE"):
        return op
    reason = headers.get(_MARKER_REASON)
    if reason in ("MaxAge", "Purge"):
        return "PURGE"
    if reason == "Remove":
        return "DEL"
    return "PUT"


def _entry(bucket: str, msg: StoredMessage) -> KVEntry:
    prefix = f"$KV.{bucket}."
    return KVEntry(
        key=msg.subject[len(prefix) :],
        value=msg.data,
        revision=msg.seq,
        created=msg.time,
        operation=operation_of(msg.headers),
        marker_reason=msg.headers.get(_MARKER_REASON, ""),
    )


def _bucket(name: str, info: StreamDetails) -> KVBucket:
    spec, state = info.spec, info.state
    return KVBucket(
        name=name,
        values=state.messages,
        bytes=state.bytes,
        history=spec.max_msgs_per_subject or 1,
        ttl=spec.max_age,
        max_bytes=spec.max_bytes if spec.max_bytes > 0 else 0,
        storage=spec.storage or "file",
        replicas=spec.replicas or 1,
        created=info.created,
        limit_marker_ttl=spec.subject_delete_marker_ttl,
    )


#: Most messages a KV reader has in transit (the ordered reader's default window).
_READ_WINDOW = 32


class KeyValueStore:
    """KV operations on one NATS connection; every method takes the NATS bucket name."""

    def __init__(self, adapter: NatsAdapter, *, timeout: float = 5.0) -> None:
        self._adapter = adapter
        self._timeout = timeout
        self._api = JetStreamAdapter(adapter, timeout)

    async def _window(self, bucket: str, *, headers_only: bool = False) -> int:
        """Messages a reader of ``bucket`` may have in transit: as many of the largest value
        seen there as fit the object read window (NATSGW_OBJECT_READ_WINDOW_BYTES), 1 to 32.
        Bounds what one history or watch of large values has nats-server queue at once. A
        bucket not seen yet counts as holding one value of all its bytes (at most max_payload)."""
        if headers_only:
            return _READ_WINDOW
        adapter = self._adapter
        stream = stream_name(bucket)
        largest = adapter.sizes.reservation(stream, adapter.client().max_payload)
        if not adapter.sizes.known(stream):
            with contextlib.suppress(GatewayError):
                info = await self._api.stream_info(stream)
                largest = min(largest, max(info.state.bytes, 1))
        return max(1, min(_READ_WINDOW, adapter.object_read_window // largest))

    def _budget(self, timeout: float | None) -> Budget:
        return Budget(timeout if timeout is not None else self._timeout)

    # -- buckets ----------------------------------------------------------------------------------

    async def create_bucket(
        self,
        bucket: str,
        defaults: BucketDefaults,
        *,
        exist_ok: bool = False,
        timeout: float | None = None,
    ) -> KVBucket:
        budget = self._budget(timeout)
        with contextlib.suppress(NotFound):
            existing = await self.bucket(bucket, timeout=budget.left())
            if exist_ok:
                return existing
            raise AlreadyExists(f"bucket already exists: {bucket}")
        try:
            await self._api.create_stream(
                bucket_config(bucket, defaults),
                what=f"create Key-Value bucket {bucket}",
                timeout=budget.left(),
            )
        except AlreadyExists:
            if not exist_ok:
                raise
        return await self.bucket(bucket, timeout=budget.left())

    async def bucket(self, bucket: str, *, timeout: float | None = None) -> KVBucket:
        """The bucket's state; NotFound when it does not exist."""
        info = await self._api.stream_info(
            stream_name(bucket), what=f"Key-Value bucket {bucket}", timeout=timeout
        )
        return _bucket(bucket, info)

    async def delete_bucket(self, bucket: str) -> None:
        await self._api.delete_stream(stream_name(bucket), what=f"delete Key-Value bucket {bucket}")

    async def list_buckets(self, wanted: Callable[[str], bool]) -> list[KVBucket]:
        """Every KV bucket whose NATS name ``wanted`` accepts (others are never looked at)."""
        names = await self._api.stream_names()
        out: list[KVBucket] = []
        for name in names:
            if not name.startswith("KV_") or not wanted(name[3:]):
                continue
            with contextlib.suppress(NotFound):  # deleted meanwhile
                out.append(await self.bucket(name[3:]))
        return sorted(out, key=lambda b: b.name)

    # -- values -----------------------------------------------------------------------------------

    async def put(
        self,
        bucket: str,
        key: str,
        value: bytes,
        defaults: BucketDefaults,
        *,
        timeout: float | None = None,
        ttl: str = "",
    ) -> int:
        """Put; creates the bucket with ``defaults`` when it does not exist yet.

        ``timeout`` (the call's deadline) bounds the whole put, bucket creation included;
        ``ttl`` is a ``Nats-TTL`` value ("" for none).
        """
        budget = self._budget(timeout)
        with translated(f"put {key}"), _ttl_refusal(bucket):
            try:
                return await self._publish(bucket, key, value, budget, ttl=ttl)
            except NoStream:
                pass
            await self.create_bucket(bucket, defaults, exist_ok=True, timeout=budget.left())
            return await self._publish(bucket, key, value, budget, ttl=ttl)

    async def create(
        self,
        bucket: str,
        key: str,
        value: bytes,
        defaults: BucketDefaults,
        *,
        timeout: float | None = None,
        ttl: str = "",
    ) -> int:
        """Put only when the key has no live value; AlreadyExists otherwise."""
        budget = self._budget(timeout)
        for _ in range(3):
            current = await self._last(bucket, key, budget)
            if current is None:
                expected = 0
            elif current.operation != "PUT":
                expected = current.revision
            else:
                raise AlreadyExists(
                    f"key {key!r} already exists (revision {current.revision}); "
                    "use KVUpdate with that revision to change it"
                )
            try:
                with translated(f"create {key}"), _ttl_refusal(bucket):
                    return await self._publish(
                        bucket, key, value, budget, expected=expected, ttl=ttl
                    )
            except NoStream:
                await self.create_bucket(bucket, defaults, exist_ok=True, timeout=budget.left())
            except WrongLastSequence:
                continue  # changed meanwhile: look again
        current = await self._last(bucket, key, budget)
        raise AlreadyExists(
            f"key {key!r} already exists (revision {current.revision if current else 0})"
        )

    async def update(
        self, bucket: str, key: str, value: bytes, expected: int, *, timeout: float | None = None
    ) -> int:
        """Compare-and-set: FailedPrecondition (naming the current revision) on mismatch."""
        budget = self._budget(timeout)
        try:
            with translated(f"update {key}"):
                return await self._publish(bucket, key, value, budget, expected=expected)
        except NoStream:
            raise FailedPrecondition(
                f"key {key!r} is not at revision {expected}: the bucket does not exist"
            ) from None
        except WrongLastSequence:
            raise await self._conflict(bucket, key, expected, budget) from None

    async def _conflict(
        self, bucket: str, key: str, expected: int, budget: Budget
    ) -> FailedPrecondition:
        current = await self._last(bucket, key, budget)
        if current is None:
            now = "the key does not exist (current revision 0)"
        elif current.operation != "PUT":
            now = f"the key was deleted at revision {current.revision}"
        else:
            now = f"the current revision is {current.revision}"
        return FailedPrecondition(f"key {key!r} is not at revision {expected}: {now}")

    async def delete(
        self,
        bucket: str,
        key: str,
        *,
        expected: int = 0,
        purge: bool = False,
        timeout: float | None = None,
        ttl: str = "",
    ) -> bool:
        """Leave a delete (or purge) marker; False when the bucket does not exist. ``ttl``
        (a ``Nats-TTL`` value) makes the marker itself expire."""
        budget = self._budget(timeout)
        headers = {KV_OP: "PURGE", _ROLLUP: "sub"} if purge else {KV_OP: "DEL"}
        if expected:
            headers[_EXPECTED_LAST_SUBJECT_SEQ] = str(expected)
        if ttl:
            headers[_TTL] = ttl
        try:
            with translated(f"delete {key}"), _ttl_refusal(bucket):
                await self._store(bucket, key, b"", headers, budget)
        except NoStream:
            if expected:
                raise FailedPrecondition(
                    f"key {key!r} is not at revision {expected}: the bucket does not exist"
                ) from None
            return False
        except WrongLastSequence:
            raise await self._conflict(bucket, key, expected, budget) from None
        return True

    async def _publish(
        self,
        bucket: str,
        key: str,
        value: bytes,
        budget: Budget,
        expected: int | None = None,
        ttl: str = "",
    ) -> int:
        headers = {} if expected is None else {_EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
        if ttl:
            headers[_TTL] = ttl
        return await self._store(bucket, key, value, headers, budget)

    async def _store(
        self, bucket: str, key: str, value: bytes, headers: dict[str, str], budget: Budget
    ) -> int:
        """A stream publish as nats-py's KV makes it (no Nats-Expected-Stream header); its
        revision. NoStream when the bucket is missing, WrongLastSequence on a failed check."""
        ack = await self._api.publish(
            _subject(bucket, key),
            value,
            stream=stream_name(bucket),
            headers=headers,
            timeout=budget.left(),
            expect_stream=False,
        )
        return ack.sequence

    async def get(
        self, bucket: str, key: str, revision: int = 0, *, timeout: float | None = None
    ) -> KVEntry | None:
        """The live value (or the given revision); None when missing, deleted or not this key."""
        budget = self._budget(timeout)
        entry: KVEntry | None
        if revision:
            msg = await self._get_msg(bucket, budget, seq=revision)
            if msg is None or msg.subject != _subject(bucket, key):
                return None
            entry = _entry(bucket, msg)
        else:
            entry = await self._last(bucket, key, budget)
        if entry is None or entry.operation != "PUT":
            return None
        return entry

    async def _last(self, bucket: str, key: str, budget: Budget) -> KVEntry | None:
        msg = await self._get_msg(bucket, budget, subject=_subject(bucket, key))
        return None if msg is None else _entry(bucket, msg)

    async def _get_msg(
        self, bucket: str, budget: Budget, *, seq: int = 0, subject: str = ""
    ) -> StoredMessage | None:
        return await self._api.get_message(
            stream_name(bucket),
            seq=seq,
            subject=subject,
            what=f"read from bucket {bucket}",
            timeout=budget.left(),
        )

    # -- listings ---------------------------------------------------------------------------------

    async def keys(self, bucket: str) -> list[str]:
        """Keys with a live value, sorted; empty when the bucket is missing or empty."""
        prefix = len(f"$KV.{bucket}.")
        keys = [
            msg.subject[prefix:]
            async for msg in self._snapshot(bucket, ">", Start.LAST_PER_SUBJECT, headers_only=True)
            if operation_of(msg.headers) == "PUT"
        ]
        return sorted(keys)

    async def history(self, bucket: str, key: str) -> list[KVEntry]:
        """Every stored revision of ``key``, oldest first; empty when there is none."""
        return [_entry(bucket, msg) async for msg in self._snapshot(bucket, key, Start.ALL)]

    async def _snapshot(
        self, bucket: str, pattern: str, start: Start, *, headers_only: bool = False
    ) -> AsyncIterator[StoredMessage]:
        reader = OrderedReader(
            self._api,
            stream_name(bucket),
            _subject(bucket, pattern),
            start=start,
            headers_only=headers_only,
            patience=self._timeout,
            window=await self._window(bucket, headers_only=headers_only),
        )
        try:
            try:
                await reader.open()
            except NotFound:
                return
            if reader.initial_pending == 0:
                return
            while True:
                msg = await reader.next()
                yield msg
                if msg.pending == 0:
                    return
        finally:
            await reader.close()

    async def watch(
        self, bucket: str, pattern: str, *, from_revision: int = 0, updates_only: bool = False
    ) -> KVWatch:
        """Start watching keys matching ``pattern``; NotFound when the bucket does not exist.

        The watch is in place when this returns; iterate it for changes, close it when done.
        """
        if from_revision:
            start = Start.SEQUENCE
        elif updates_only:
            start = Start.NEW
        else:
            start = Start.LAST_PER_SUBJECT
        reader = OrderedReader(
            self._api,
            stream_name(bucket),
            _subject(bucket, pattern),
            start=start,
            start_seq=from_revision,
            follow=True,
            window=await self._window(bucket),
        )
        await reader.open()
        return KVWatch(bucket, reader)


class KVWatch:
    """Changes to the watched keys in revision order, forever, across NATS reconnects.

    Ends with NotFound when the bucket is deleted while watching.
    """

    def __init__(self, bucket: str, reader: OrderedReader) -> None:
        self._bucket = bucket
        self._reader = reader

    def __aiter__(self) -> KVWatch:
        return self

    async def __anext__(self) -> KVEntry:
        return _entry(self._bucket, await self._reader.next())

    @property
    def resets(self) -> int:
        """How often the watch re-created its consumer (reconnects, gaps)."""
        return self._reader.resets

    async def close(self) -> None:
        await self._reader.close()
