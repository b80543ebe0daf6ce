"""NATS JetStream Key-Value, in plain values.

Takes NATS bucket names (already mapped by natsgw.tenancy) and validated keys. Values are written
and read with JetStream's own primitives (publish with expected-sequence headers, direct get,
ordered consumers) on the standard ``KV_<bucket>`` stream and ``$KV.<bucket>.<key>`` subjects, so
buckets stay fully compatible with every NATS client and the ``nats kv`` CLI.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

from nats.js import JetStreamContext, api
from nats.js import errors as js_errors

from natsgw.adapter.core import NatsAdapter
from natsgw.adapter.errors import translated
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.adapter.ordered import OrderedReader, Start, StoredMessage
from natsgw.adapter.types import BucketDefaults, KVBucket, KVEntry, StreamDetails
from natsgw.errors import AlreadyExists, FailedPrecondition, NotFound

KV_OP = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_ROLLUP = "Nats-Rollup"
_WRONG_LAST_SEQUENCE = (10071, 10164)
_STREAM_NOT_FOUND = 10059
_DUPLICATE_WINDOW = 120.0


def stream_name(bucket: str) -> str:
    return f"KV_{bucket}"


def _subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


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
    )


def _is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, js_errors.APIError) and exc.err_code in _WRONG_LAST_SEQUENCE


def _is_no_stream(exc: BaseException) -> bool:
    return isinstance(exc, js_errors.NoStreamResponseError) or (
        isinstance(exc, js_errors.APIError) and exc.err_code == _STREAM_NOT_FOUND
    )


class KeyValueStore:
    """KV operations on one NATS connection; every method takes the NATS bucket name."""

    def __init__(self, adapter: NatsAdapter, *, timeout: float = 5.0) -> None:
        self._adapter = adapter
        self._timeout = timeout
        self._api = JetStreamAdapter(adapter, timeout)

    def _js(self) -> JetStreamContext:
        return self._adapter.jetstream()

    # -- buckets ----------------------------------------------------------------------------------

    async def create_bucket(
        self, bucket: str, defaults: BucketDefaults, *, exist_ok: bool = False
    ) -> KVBucket:
        js = self._js()
        with contextlib.suppress(NotFound):
            existing = await self.bucket(bucket)
            if exist_ok:
                return existing
            raise AlreadyExists(f"bucket already exists: {bucket}")
        config = api.KeyValueConfig(
            bucket=bucket,
            history=defaults.history,
            ttl=defaults.ttl or None,
            max_bytes=defaults.max_bytes or -1,
            storage=api.StorageType(defaults.storage),
            replicas=defaults.replicas,
            direct=True,
        )
        try:
            with translated(f"create Key-Value bucket {bucket}"):
                await js.create_key_value(config)
        except AlreadyExists:
            if not exist_ok:
                raise
        return await self.bucket(bucket)

    async def bucket(self, bucket: str) -> KVBucket:
        """The bucket's state; NotFound when it does not exist."""
        info = await self._api.stream_info(stream_name(bucket), what=f"Key-Value bucket {bucket}")
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

    async def put(self, bucket: str, key: str, value: bytes, defaults: BucketDefaults) -> int:
        """Put; creates the bucket with ``defaults`` when it does not exist yet."""
        try:
            return await self._publish(bucket, key, value)
        except Exception as exc:
            if not _is_no_stream(exc):
                with translated(f"put {key}"):
                    raise
        await self.create_bucket(bucket, defaults, exist_ok=True)
        with translated(f"put {key}"):
            return await self._publish(bucket, key, value)

    async def create(self, bucket: str, key: str, value: bytes, defaults: BucketDefaults) -> int:
        """Put only when the key has no live value; AlreadyExists otherwise."""
        for _ in range(3):
            current = await self._last(bucket, key)
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
                return await self._publish(bucket, key, value, expected=expected)
            except Exception as exc:
                if _is_no_stream(exc):
                    await self.create_bucket(bucket, defaults, exist_ok=True)
                    continue
                if _is_wrong_last_sequence(exc):
                    continue  # changed meanwhile: look again
                with translated(f"create {key}"):
                    raise
        current = await self._last(bucket, key)
        raise AlreadyExists(
            f"key {key!r} already exists (revision {current.revision if current else 0})"
        )

    async def update(self, bucket: str, key: str, value: bytes, expected: int) -> int:
        """Compare-and-set: FailedPrecondition (naming the current revision) on mismatch."""
        try:
            return await self._publish(bucket, key, value, expected=expected)
        except Exception as exc:
            if _is_no_stream(exc):
                raise FailedPrecondition(
                    f"key {key!r} is not at revision {expected}: the bucket does not exist"
                ) from None
            if _is_wrong_last_sequence(exc):
                raise await self._conflict(bucket, key, expected) from None
            with translated(f"update {key}"):
                raise

    async def _conflict(self, bucket: str, key: str, expected: int) -> FailedPrecondition:
        current = await self._last(bucket, key)
        if current is None:
            now = "the key does not exist (current revision 0)"
        elif current.operation != "PUT":
            now = f"the key was deleted at revision {current.revision}"
        else:
            now = f"the current revision is {current.revision}"
        return FailedPrecondition(f"key {key!r} is not at revision {expected}: {now}")

    async def delete(
        self, bucket: str, key: str, *, expected: int = 0, purge: bool = False
    ) -> bool:
        """Leave a delete (or purge) marker; False when the bucket does not exist."""
        headers = {KV_OP: "PURGE", _ROLLUP: "sub"} if purge else {KV_OP: "DEL"}
        if expected:
            headers[_EXPECTED_LAST_SUBJECT_SEQ] = str(expected)
        try:
            await self._js().publish(_subject(bucket, key), b"", headers=headers)
        except Exception as exc:
            if _is_no_stream(exc):
                if expected:
                    raise FailedPrecondition(
                        f"key {key!r} is not at revision {expected}: the bucket does not exist"
                    ) from None
                return False
            if _is_wrong_last_sequence(exc):
                raise await self._conflict(bucket, key, expected) from None
            with translated(f"delete {key}"):
                raise
        return True

    async def _publish(
        self, bucket: str, key: str, value: bytes, expected: int | None = None
    ) -> int:
        headers = None if expected is None else {_EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
        ack = await self._js().publish(_subject(bucket, key), value, headers=headers)
        return int(ack.seq)

    async def get(self, bucket: str, key: str, revision: int = 0) -> KVEntry | None:
        """The live value (or the given revision); None when missing, deleted or not this key."""
        entry: KVEntry | None
        if revision:
            msg = await self._get_msg(bucket, seq=revision)
            if msg is None or msg.subject != _subject(bucket, key):
                return None
            entry = _entry(bucket, msg)
        else:
            entry = await self._last(bucket, key)
        if entry is None or entry.operation != "PUT":
            return None
        return entry

    async def _last(self, bucket: str, key: str) -> KVEntry | None:
        msg = await self._get_msg(bucket, subject=_subject(bucket, key))
        return None if msg is None else _entry(bucket, msg)

    async def _get_msg(
        self, bucket: str, *, seq: int = 0, subject: str = ""
    ) -> StoredMessage | None:
        return await self._api.get_message(
            stream_name(bucket), seq=seq, subject=subject, what=f"read from bucket {bucket}"
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
        js = self._js()
        reader = OrderedReader(
            self._adapter.client(),
            js,
            stream_name(bucket),
            _subject(bucket, pattern),
            start=start,
            headers_only=headers_only,
            patience=self._timeout,
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
        js = self._js()
        if from_revision:
            start = Start.SEQUENCE
        elif updates_only:
            start = Start.NEW
        else:
            start = Start.LAST_PER_SUBJECT
        reader = OrderedReader(
            self._adapter.client(),
            js,
            stream_name(bucket),
            _subject(bucket, pattern),
            start=start,
            start_seq=from_revision,
            follow=True,
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
