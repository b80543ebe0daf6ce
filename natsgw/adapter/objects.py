"""NATS JetStream Object Store, in plain values, streamed chunk by chunk.

Objects are stored exactly as every NATS client stores them (stream ``OBJ_<bucket>``, chunks on
``$O.<bucket>.C.<nuid>``, a JSON meta record on ``$O.<bucket>.M.<base64url(name)>`` with the
SHA-256 digest), so the ``nats object`` CLI and the Go/Python clients read what the gateway writes
and the other way round. The chunk traffic is done here rather than through nats-py's
``ObjectStore`` because its ``get()`` grows one ``bytes`` buffer per chunk (quadratic) and its
``put()`` takes only synchronous readers:

- writing keeps a bounded window of chunks in flight (publish, then await the stream's acks), so
  memory is a few chunks whatever the object's size;
- reading uses :class:`natsgw.adapter.ordered.OrderedReader`, answering flow control as soon as
  the caller has taken the chunks before it.

User metadata is kept in the record's ``metadata`` map (the Go client's ``ObjectMeta.Metadata``).
The bucket's stream config is the one nats-py's ``create_object_store`` makes
(tests/unit/test_bucket_configs.py compares them); everything goes through the adapter's one
JetStream client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import nats.nuid
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from natsgw.adapter.core import NatsAdapter
from natsgw.adapter.errors import ApiError, DataLoss, NoStream, WrongLastSequence, translated
from natsgw.adapter.jetstream import Budget, JetStreamAdapter
from natsgw.adapter.ordered import OrderedReader, Start, StoredMessage
from natsgw.adapter.replies import ReplyInbox, no_responders
from natsgw.adapter.types import BucketDefaults, ObjectStat
from natsgw.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    Unavailable,
)

DIGEST_PREFIX = "SHA-256="
_ROLLUP = "Nats-Rollup"
_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_NS = 1_000_000_000
#: Tries to replace a meta record that other writers keep replacing first.
_META_ATTEMPTS = 32
#: Chunks published but not yet acknowledged by the stream, per upload.
ACK_WINDOW = 16
#: Chunks the server may send ahead of a reader (each up to the chunk size).
READ_WINDOW = 16
#: Room left in a NATS message for the protocol around a chunk.
_CHUNK_HEADROOM = 1024


def stream_name(bucket: str) -> str:
    return f"OBJ_{bucket}"


def bucket_config(bucket: str, defaults: BucketDefaults) -> dict[str, Any]:
    """The ``OBJ_<bucket>`` stream exactly as nats-py's ``create_object_store`` configures it:
    chunk and meta subjects, rollups (a meta record replaces the last), direct get."""
    return {
        "name": stream_name(bucket),
        "subjects": [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
        "max_consumers": 0,
        "max_bytes": defaults.max_bytes or -1,
        "discard": "new",
        "discard_new_per_subject": False,
        "max_msgs_per_subject": -1,
        "max_msg_size": -1,
        "storage": defaults.storage,
        "num_replicas": defaults.replicas,
        "no_ack": False,
        "duplicate_window": 0,
        "sealed": False,
        "deny_delete": False,
        "deny_purge": False,
        "allow_rollup_hdrs": True,
        "allow_direct": True,
        "max_age": int((defaults.ttl or 0.0) * _NS),
    }


def meta_subject(bucket: str, name: str) -> str:
    token = base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")
    return f"$O.{bucket}.M.{token}"


def chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


def format_digest(sha256: bytes) -> str:
    return DIGEST_PREFIX + base64.urlsafe_b64encode(sha256).decode("ascii")


def parse_digest(digest: str) -> bytes | None:
    """The raw SHA-256 of a NATS digest string, or None when it is not one."""
    if not digest.upper().startswith(DIGEST_PREFIX):
        return None
    try:
        raw = base64.urlsafe_b64decode(digest[len(DIGEST_PREFIX) :])
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


@dataclass(frozen=True, slots=True)
class _Record:
    stat: ObjectStat
    deleted: bool
    link: bool
    seq: int = 0  # stream sequence of the meta record (for compare-and-set)


def _record(raw: Mapping[str, Any], time: datetime.datetime | None, seq: int = 0) -> _Record:
    metadata = raw.get("metadata") or {}
    options = raw.get("options") or {}
    return _Record(
        stat=ObjectStat(
            name=str(raw.get("name", "")),
            size=int(raw.get("size") or 0),
            chunks=int(raw.get("chunks") or 0),
            digest=str(raw.get("digest") or ""),
            object_id=str(raw.get("nuid") or ""),
            modified=time,
            metadata={str(k): str(v) for k, v in dict(metadata).items()},
        ),
        deleted=bool(raw.get("deleted")),
        link=bool(isinstance(options, dict) and options.get("link")),
        seq=seq,
    )


def _meta_body(bucket: str, stat: ObjectStat, chunk_size: int, *, deleted: bool = False) -> bytes:
    body: dict[str, Any] = {
        "name": stat.name,
        "bucket": bucket,
        "nuid": stat.object_id,
        "size": stat.size,
        "chunks": stat.chunks,
        "mtime": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "options": {"max_chunk_size": chunk_size},
    }
    if stat.digest:
        body["digest"] = stat.digest
    if stat.metadata:
        body["metadata"] = dict(stat.metadata)
    if deleted:
        body["deleted"] = True
    return json.dumps(body).encode()


class _AckWindow:
    """Publishes chunks in order with a reply inbox; at most ``size`` unacknowledged at once."""

    def __init__(self, nc: NatsClient, subject: str, size: int, timeout: float) -> None:
        self._nc = nc
        self._subject = subject
        self._size = size
        self._timeout = timeout
        self._inbox = ReplyInbox(nc, "object upload")
        self._order: deque[asyncio.Future[Msg]] = deque()
        self._sent = 0

    async def open(self) -> None:
        await self._inbox.open()

    async def send(self, payload: bytes) -> None:
        while len(self._order) >= self._size:
            await self._await_oldest()
        reply, future = self._inbox.expect(self._sent)
        self._sent += 1
        self._order.append(future)
        with translated("object upload"):
            await self._nc.publish(self._subject, payload, reply=reply)

    async def _await_oldest(self) -> None:
        future = self._order.popleft()
        try:
            with translated("object upload"):
                _check_ack(await asyncio.wait_for(future, self._timeout))
        except DeadlineExceeded:
            raise DeadlineExceeded(
                "object upload: NATS did not acknowledge a chunk in time"
            ) from None

    async def drain(self) -> None:
        while self._order:
            await self._await_oldest()

    async def settle(self) -> None:
        """Wait (bounded) for every chunk still in flight to be answered, ignoring errors.

        JetStream may apply a purge before publishes that were sent earlier, so an upload that
        failed must let its chunks land (or be refused) before purging them: else one could be
        stored after the purge, an orphan.
        """
        pending = [f for f in self._order if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._timeout)

    async def close(self) -> None:
        self._order.clear()
        await self._inbox.close()


def _check_ack(msg: Msg) -> None:
    """A chunk's stream acknowledgement; raises what NATS (or nobody) answered instead."""
    if no_responders(msg):
        raise NoStream("object upload: the bucket no longer exists; nothing was stored")
    try:
        body = json.loads(msg.data)
    except ValueError:
        raise Unavailable("object upload: unreadable acknowledgement") from None
    if "error" in body:
        raise ApiError.of(body["error"])


class ObjectStoreClient:
    """Object Store operations on one NATS connection; methods take the NATS bucket name."""

    def __init__(self, adapter: NatsAdapter, *, timeout: float = 5.0) -> None:
        self._adapter = adapter
        self._timeout = timeout
        self._api = JetStreamAdapter(adapter, timeout)

    # -- buckets ----------------------------------------------------------------------------------

    async def ensure_bucket(
        self, bucket: str, defaults: BucketDefaults, *, timeout: float | None = None
    ) -> None:
        budget = Budget(timeout if timeout is not None else self._timeout)
        try:
            await self._api.stream_info(
                stream_name(bucket), what=f"object bucket {bucket}", timeout=budget.left()
            )
            return
        except NotFound:
            pass
        with contextlib.suppress(AlreadyExists):  # made meanwhile by a concurrent first put
            await self._api.create_stream(
                bucket_config(bucket, defaults),
                what=f"create object bucket {bucket}",
                timeout=budget.left(),
            )

    # -- meta -------------------------------------------------------------------------------------

    async def _meta(self, bucket: str, name: str) -> _Record | None:
        """The object's latest meta record (deleted ones included); None when there is none."""
        raw = await self._api.get_message(
            stream_name(bucket), subject=meta_subject(bucket, name), what=f"object {name!r}"
        )
        if raw is None:
            return None
        try:
            return _record(json.loads(raw.data or b"{}"), raw.time, raw.seq)
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataLoss(f"object {name!r}: its meta record is unreadable ({exc})") from None

    async def stat(self, bucket: str, name: str) -> ObjectStat | None:
        record = await self._meta(bucket, name)
        if record is None or record.deleted:
            return None
        if record.link:
            raise FailedPrecondition(
                f"object {name!r} is a link to another bucket, which the gateway does not follow"
            )
        return record.stat

    async def list(self, bucket: str) -> list[ObjectStat]:
        """Live objects, sorted by name; NotFound when the bucket is missing (not empty)."""
        reader = OrderedReader(
            self._api,
            stream_name(bucket),
            f"$O.{bucket}.M.>",
            start=Start.LAST_PER_SUBJECT,
            patience=self._timeout,
        )
        out: list[ObjectStat] = []
        try:
            await reader.open()  # NotFound: no such bucket
            pending = reader.initial_pending
            while pending:
                msg = await reader.next()
                pending = msg.pending
                try:
                    record = _record(json.loads(msg.data), msg.time)
                except (ValueError, TypeError, AttributeError):
                    continue  # not a meta record any client wrote; nothing to list
                if not record.deleted:
                    out.append(record.stat)
        finally:
            await reader.close()
        return sorted(out, key=lambda s: s.name)

    async def delete(self, bucket: str, name: str) -> bool:
        """Mark the object deleted and drop its chunks; False when there was nothing to delete."""
        for _ in range(_META_ATTEMPTS):
            record = await self._meta(bucket, name)
            if record is None or record.deleted:
                return False
            stat = record.stat
            gone = ObjectStat(
                name=name, size=0, chunks=0, digest="", object_id=stat.object_id, modified=None
            )
            if not await self._write_meta(
                bucket, name, _meta_body(bucket, gone, 0, deleted=True), record
            ):
                continue  # replaced meanwhile: delete what is there now
            if stat.object_id:
                await self._purge_quietly(bucket, chunk_subject(bucket, stat.object_id))
            return True
        raise Unavailable(f"object {name!r} kept changing while being deleted; try again")

    async def _write_meta(
        self,
        bucket: str,
        name: str,
        body: bytes,
        previous: _Record | None,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Replace the meta record only if it is still ``previous``; False when it changed.

        The compare-and-set makes concurrent writers of one name safe: exactly one replaces a
        given version, so exactly one purges that version's chunks and none are orphaned.
        """
        headers = {
            _ROLLUP: "sub",
            _EXPECTED_LAST_SUBJECT_SEQ: str(previous.seq if previous is not None else 0),
        }
        try:
            with translated(f"store object {name!r}"):
                await self._api.publish(
                    meta_subject(bucket, name),
                    body,
                    stream=stream_name(bucket),
                    headers=headers,
                    timeout=timeout,
                    expect_stream=False,
                )
        except WrongLastSequence:
            return False
        return True

    # -- content ----------------------------------------------------------------------------------

    async def put(
        self,
        bucket: str,
        name: str,
        content: AsyncIterable[bytes],
        *,
        metadata: Mapping[str, str],
        defaults: BucketDefaults,
        chunk_size: int,
        expected_sha256: bytes | None = None,
        timeout: float | None = None,
    ) -> ObjectStat:
        """Store ``content`` as object ``name``; the previous version goes once this one is in.

        Nothing is visible until every chunk is acknowledged and the meta record written; on any
        failure (or cancellation) the chunks written so far are purged. ``timeout`` (the call's
        deadline) bounds bucket creation and the meta record's write, not the upload's pace.
        """
        budget = Budget(timeout) if timeout is not None else None
        await self.ensure_bucket(bucket, defaults, timeout=budget.left() if budget else None)
        nc = self._adapter.client()
        previous = await self._meta(bucket, name)
        chunk_size = max(1024, min(chunk_size, nc.max_payload - _CHUNK_HEADROOM))
        nuid = nats.nuid.NUID().next().decode()
        subject = chunk_subject(bucket, nuid)
        window = _AckWindow(nc, subject, ACK_WINDOW, self._timeout)
        digest = hashlib.sha256()
        size = chunks = 0
        stored = False
        meta_sent: tuple[bytes, _Record | None] | None = None  # a meta write whose answer is due
        try:
            await window.open()
            pending = bytearray()

            async def send(payload: bytes) -> None:
                nonlocal size, chunks
                digest.update(payload)
                size += len(payload)
                chunks += 1
                await window.send(payload)

            async for piece in content:
                if not piece:
                    continue
                view = memoryview(piece)
                offset = 0
                if pending:
                    offset = min(chunk_size - len(pending), len(view))
                    pending += view[:offset]
                    if len(pending) == chunk_size:
                        await send(bytes(pending))
                        pending.clear()
                while len(view) - offset >= chunk_size:
                    await send(bytes(view[offset : offset + chunk_size]))
                    offset += chunk_size
                pending += view[offset:]
            if pending:
                await send(bytes(pending))
            await window.drain()
            sha = digest.digest()
            if expected_sha256 is not None and sha != expected_sha256:
                raise DataLoss(
                    f"object {name!r}: the content's SHA-256 is {sha.hex()}, the header said "
                    f"{expected_sha256.hex()}; nothing was stored"
                )
            stat = ObjectStat(
                name=name,
                size=size,
                chunks=chunks,
                digest=format_digest(sha),
                object_id=nuid,
                modified=None,
                metadata=dict(metadata),
            )
            body = _meta_body(bucket, stat, chunk_size)
            for _ in range(_META_ATTEMPTS):
                wait = budget.left() if budget else None
                meta_sent = (body, previous)
                if await self._write_meta(bucket, name, body, previous, timeout=wait):
                    stored = True
                    break
                meta_sent = None
                previous = await self._meta(bucket, name)  # another writer got in first
            if not stored:
                raise Unavailable(f"object {name!r} kept changing while being stored; try again")
        finally:
            keep: bool | None = stored
            if not stored and meta_sent is not None:
                # The meta record's answer was lost (deadline, cancellation, connection): it may
                # be stored. Purging these chunks then would leave the object pointing at nothing.
                keep = await asyncio.shield(self._settle_meta(bucket, name, nuid, *meta_sent))
            if not keep:
                await asyncio.shield(window.settle())
            await window.close()
            if keep is False:
                await asyncio.shield(self._purge_quietly(bucket, subject))
            elif (
                keep
                and not stored
                and previous
                and not previous.deleted
                and previous.stat.object_id
            ):
                await asyncio.shield(
                    self._purge_quietly(bucket, chunk_subject(bucket, previous.stat.object_id))
                )
        if previous is not None and not previous.deleted and previous.stat.object_id:
            await self._purge_quietly(bucket, chunk_subject(bucket, previous.stat.object_id))
        written = await self._meta(bucket, name)
        return written.stat if written is not None else stat

    async def _settle_meta(
        self, bucket: str, name: str, nuid: str, body: bytes, previous: _Record | None
    ) -> bool | None:
        """Whether a meta write whose answer was lost is the object's version now: True (it is,
        or is now), False (another version is: this one can never land), None (unknown: NATS did
        not answer; the chunks are kept, at worst orphaned, never the record left dangling).

        Writing the same record again with the same expectation fences the first write: NATS
        takes a stream's publishes in order, so the repeat either stores it (the first never
        landed) or is refused because the first one, or another writer, got in.
        """
        try:
            if await self._write_meta(bucket, name, body, previous, timeout=self._timeout):
                return True
            current = await self._meta(bucket, name)
        except Exception:  # any failure here leaves the outcome unknown
            return None
        return current is not None and current.stat.object_id == nuid

    async def _purge_quietly(self, bucket: str, subject: str) -> None:
        with contextlib.suppress(Exception):
            await self._api.purge_stream(stream_name(bucket), subject)

    async def read(self, bucket: str, stat: ObjectStat) -> AsyncIterator[bytes]:
        """The object's chunks in order; DataLoss (after the last chunk) if size or digest differ.

        The caller must not treat the content as complete until this iterator ends normally.
        """
        expected = parse_digest(stat.digest)
        if expected is None:
            raise DataLoss(f"object {stat.name!r} has no SHA-256 digest ({stat.digest!r})")
        digest = hashlib.sha256()
        size = 0
        if stat.chunks:
            # Every chunk but the last is full: no chunk is larger than this.
            chunk = stat.size // (stat.chunks - 1) if stat.chunks > 1 else stat.size
            chunk = min(chunk, self._adapter.client().max_payload) + _CHUNK_HEADROOM
            adapter = self._adapter
            reader = OrderedReader(
                self._api,
                stream_name(bucket),
                chunk_subject(bucket, stat.object_id),
                start=Start.ALL,
                patience=max(self._timeout, 10.0),
                # At most the object read window in transit for this read, and all reads
                # together within the connection's read window (natsgw.adapter.flow).
                window=max(1, min(READ_WINDOW, adapter.object_read_window // chunk)),
                inflow=adapter.inflow,
                message_size=chunk,
                total=stat.chunks,
            )
            try:
                try:
                    await reader.open()
                except NotFound:
                    raise DataLoss(f"object {stat.name!r}: its bucket vanished") from None
                if reader.initial_pending < stat.chunks:
                    raise DataLoss(
                        f"object {stat.name!r}: {reader.initial_pending} of its {stat.chunks} "
                        "chunks are stored"
                    )
                for _ in range(stat.chunks):
                    msg: StoredMessage = await reader.next()
                    digest.update(msg.data)
                    size += len(msg.data)
                    yield msg.data
            finally:
                await reader.close()
        if size != stat.size or digest.digest() != expected:
            raise DataLoss(
                f"object {stat.name!r}: read {size} bytes with SHA-256 "
                f"{format_digest(digest.digest())}, the object says {stat.size} bytes and "
                f"{stat.digest}"
            )
