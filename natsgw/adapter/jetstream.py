"""JetStream streams, consumers, stream publishes, pulls and acks, as plain values.

Takes NATS names (already mapped by natsgw.tenancy) and returns the dataclasses of
:mod:`natsgw.adapter.types`; every nats-py error leaves as a :class:`natsgw.errors.GatewayError`.
The JetStream API is spoken as JSON directly (nats-py's manager lacks consumer-create semantics,
purge counts and pagination), through nats-py's request machinery: :meth:`JetStreamAdapter._api`
is the one request path, :meth:`JetStreamAdapter._paged` the one pager, and the KV and Object
Store modules (bucket streams, direct gets, expected-sequence publishes) and the ordered reader
(its consumers) go through this class too: it is the adapter's only JetStream client, and nats-py
is used for core NATS only (connection, PUB/SUB, request/reply).

Pull requests come back as typed outcomes (:data:`natsgw.adapter.types.PullOutcome`); NATS's
status codes are read in :func:`_outcome` and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from natsgw.adapter.core import NatsAdapter, header_bytes
from natsgw.adapter.errors import (
    ApiError,
    NoStream,
    WrongLastSequence,
    as_gateway_error,
    translated,
)
from natsgw.adapter.flow import Inflow, Lease, SizeHints
from natsgw.adapter.replies import ReplyInbox, Requester, no_responders
from natsgw.adapter.types import (
    REQUEST_ENDED,
    BatchCompleted,
    ConsumerDeleted,
    ConsumerDetails,
    ConsumerSpec,
    ConsumerStateValue,
    Heartbeat,
    JetStreamDelivery,
    LeadershipChange,
    NoMessages,
    NoResponders,
    PullOutcome,
    PullRefused,
    RequestExpired,
    StoredMessage,
    StreamDetails,
    StreamPubAck,
    StreamSpec,
    StreamStateValue,
    StreamSummary,
    TooLarge,
)
from natsgw.compat import nats as nats_compat
from natsgw.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    GatewayError,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from natsgw.tenancy.acks import parse_ack_subject

log = structlog.get_logger("natsgw.adapter.jetstream")

_NS = 1_000_000_000
_ZERO_TIME = "0001-01-01T00:00:00Z"
_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")
_STATUS = "Status"
_DESCRIPTION = "Description"
#: Extra time a pull request gets beyond its ``expires`` for the server's 408 to arrive.
_EXPIRY_GRACE = 1.0
#: Longest a pull request keeps its flow-control reservation (natsgw.adapter.flow.Lease) when
#: neither deliveries nor a status came: a backlog is sent at once, later news at publish pace.
PULL_LEASE_HOLD = 0.5


# -- time and duration helpers ----------------------------------------------------------------


def parse_time(text: str | None) -> datetime.datetime | None:
    """RFC 3339 with up to nanoseconds (as NATS writes it) -> aware datetime; zero time -> None."""
    if not text or text.startswith("0001-01-01"):
        return None
    match = _TIME_RE.match(text)
    if match is None:
        return None
    if text[-1] == "Z":  # as NATS writes it (every stored message's time): read whole, cut to µs
        return datetime.datetime.fromisoformat(text)
    base, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    offset = "+00:00" if zone == "Z" else zone
    parsed = datetime.datetime.fromisoformat(f"{base}{offset}")
    return parsed.replace(microsecond=micros).astimezone(datetime.UTC)


def format_time(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


def _seconds(nanos: Any) -> float:
    return int(nanos or 0) / _NS


# -- JSON <-> plain values ----------------------------------------------------------------------


def _stream_config(spec: StreamSpec) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": spec.name,
        "subjects": list(spec.subjects),
        "retention": spec.retention,
        "max_consumers": -1,
        "max_msgs": spec.max_msgs,
        "max_bytes": spec.max_bytes,
        "max_age": _ns(spec.max_age),
        "max_msgs_per_subject": spec.max_msgs_per_subject,
        "max_msg_size": spec.max_msg_size,
        "storage": spec.storage,
        "discard": spec.discard,
        "num_replicas": spec.replicas,
        "duplicate_window": _ns(spec.duplicate_window),
    }
    if spec.discard_new_per_subject:
        config["discard_new_per_subject"] = True
    # per-message TTLs
    if spec.allow_msg_ttl or spec.subject_delete_marker_ttl:
        config["allow_msg_ttl"] = True
    if spec.subject_delete_marker_ttl:
        config["subject_delete_marker_ttl"] = _ns(spec.subject_delete_marker_ttl)
    return config


def _stream_spec(config: Mapping[str, Any]) -> StreamSpec:
    return StreamSpec(
        name=str(config.get("name", "")),
        subjects=tuple(config.get("subjects") or ()),
        storage=str(config.get("storage", "file")),
        retention=str(config.get("retention", "limits")),
        max_msgs=int(config.get("max_msgs", -1)),
        max_bytes=int(config.get("max_bytes", -1)),
        max_age=_seconds(config.get("max_age")),
        max_msg_size=int(config.get("max_msg_size", -1)),
        max_msgs_per_subject=int(config.get("max_msgs_per_subject", -1)),
        replicas=int(config.get("num_replicas", 1)),
        discard=str(config.get("discard", "old")),
        discard_new_per_subject=bool(config.get("discard_new_per_subject", False)),
        duplicate_window=_seconds(config.get("duplicate_window")),
        allow_msg_ttl=bool(config.get("allow_msg_ttl", False)),
        subject_delete_marker_ttl=_seconds(config.get("subject_delete_marker_ttl")),
    )


def _stream_details(info: Mapping[str, Any]) -> StreamDetails:
    state = info.get("state") or {}
    return StreamDetails(
        spec=_stream_spec(info.get("config") or {}),
        state=StreamStateValue(
            messages=int(state.get("messages", 0)),
            bytes=int(state.get("bytes", 0)),
            first_seq=int(state.get("first_seq", 0)),
            last_seq=int(state.get("last_seq", 0)),
            first_ts=parse_time(state.get("first_ts")),
            last_ts=parse_time(state.get("last_ts")),
            num_subjects=int(state.get("num_subjects", 0)),
            consumer_count=int(state.get("consumer_count", 0)),
        ),
        created=parse_time(info.get("created")),
    )


#: Consumer metadata key holding the tenant's name of the consumer's dead-letter stream.
DEAD_LETTER_KEY = "natsgw.dead_letter_stream"


def _consumer_config(spec: ConsumerSpec) -> dict[str, Any]:
    config: dict[str, Any] = {
        "deliver_policy": spec.deliver_policy,
        "ack_policy": spec.ack_policy,
        "replay_policy": spec.replay_policy,
        "max_deliver": spec.max_deliver,
    }
    if spec.name:
        config["name"] = spec.name
    if spec.durable_name:
        config["durable_name"] = spec.durable_name
    if spec.filter_subject:
        config["filter_subject"] = spec.filter_subject
    if spec.ack_wait:
        config["ack_wait"] = _ns(spec.ack_wait)
    if spec.opt_start_seq:
        config["opt_start_seq"] = spec.opt_start_seq
    if spec.opt_start_time is not None:
        config["opt_start_time"] = format_time(spec.opt_start_time)
    if spec.max_ack_pending:
        config["max_ack_pending"] = spec.max_ack_pending
    if spec.inactive_threshold:
        config["inactive_threshold"] = _ns(spec.inactive_threshold)
    # consumer control
    if spec.filter_subjects:
        config["filter_subjects"] = list(spec.filter_subjects)
    if spec.description:
        config["description"] = spec.description
    if spec.metadata:
        config["metadata"] = dict(spec.metadata)
    if spec.pause_until is not None:
        config["pause_until"] = format_time(spec.pause_until)
    # --- dead letters ---
    if spec.backoff:
        config["backoff"] = [_ns(delay) for delay in spec.backoff]
    if spec.dead_letter:  # beside any other metadata (keys starting "natsgw" are the gateway's)
        config["metadata"] = {**config.get("metadata", {}), DEAD_LETTER_KEY: spec.dead_letter}
    return config


def _consumer_details(info: Mapping[str, Any]) -> ConsumerDetails:
    config = info.get("config") or {}
    delivered = info.get("delivered") or {}
    ack_floor = info.get("ack_floor") or {}
    spec = ConsumerSpec(
        name=str(config.get("name", info.get("name", ""))),
        durable_name=str(config.get("durable_name", "")),
        filter_subject=str(config.get("filter_subject", "")),
        deliver_policy=str(config.get("deliver_policy", "all")),
        ack_policy=str(config.get("ack_policy", "explicit")),
        ack_wait=_seconds(config.get("ack_wait")),
        max_deliver=int(config.get("max_deliver", -1)),
        replay_policy=str(config.get("replay_policy", "instant")),
        opt_start_seq=int(config.get("opt_start_seq", 0)),
        opt_start_time=parse_time(config.get("opt_start_time")),
        max_ack_pending=int(config.get("max_ack_pending", 0)),
        inactive_threshold=_seconds(config.get("inactive_threshold")),
        filter_subjects=tuple(config.get("filter_subjects") or ()),
        description=str(config.get("description", "")),
        metadata=dict(config.get("metadata") or {}),
        pause_until=parse_time(config.get("pause_until")),
        backoff=tuple(_seconds(delay) for delay in config.get("backoff") or ()),
        dead_letter=str((config.get("metadata") or {}).get(DEAD_LETTER_KEY, "")),
    )
    return ConsumerDetails(
        stream=str(info.get("stream_name", "")),
        name=str(info.get("name", "")),
        spec=spec,
        state=ConsumerStateValue(
            delivered_stream_seq=int(delivered.get("stream_seq", 0)),
            delivered_consumer_seq=int(delivered.get("consumer_seq", 0)),
            ack_floor_stream_seq=int(ack_floor.get("stream_seq", 0)),
            num_pending=int(info.get("num_pending", 0)),
            num_redelivered=int(info.get("num_redelivered", 0)),
            num_ack_pending=int(info.get("num_ack_pending", 0)),
            ack_floor_consumer_seq=int(ack_floor.get("consumer_seq", 0)),
            num_waiting=int(info.get("num_waiting", 0)),
            paused=bool(info.get("paused", False)),
            pause_remaining=_seconds(info.get("pause_remaining")),
            last_active=parse_time(delivered.get("last_active")),
        ),
        created=parse_time(info.get("created")),
    )


def _delivery(msg: Msg) -> JetStreamDelivery | None:
    ack = parse_ack_subject(msg.reply or "")
    if ack is None:
        return None
    return JetStreamDelivery(
        subject=msg.subject,
        data=msg.data,
        headers=dict(msg.headers or {}),
        reply=ack.subject,
        stream=ack.stream,
        consumer=ack.consumer,
        stream_seq=ack.stream_seq,
        consumer_seq=ack.consumer_seq,
        num_delivered=ack.num_delivered,
        num_pending=ack.num_pending,
        timestamp=datetime.datetime.fromtimestamp(ack.timestamp_ns / _NS, datetime.UTC),
        nats_size=len(msg.subject) + len(ack.subject) + header_bytes(msg.headers) + len(msg.data),
    )


@dataclass(frozen=True, slots=True)
class _Status:
    """A status message on a pull inbox, as NATS sent it."""

    code: int
    description: str


def _status(msg: Msg) -> _Status | None:
    headers = msg.headers or {}
    code = headers.get(_STATUS)
    if not code or msg.data:
        return None
    return _Status(
        code=int(code) if code.isdigit() else 0, description=headers.get(_DESCRIPTION, "")
    )


def _outcome(status: _Status) -> PullOutcome:
    """What a pull status means: the only place NATS's pull status codes are read.

    100 idle heartbeat; 404 nothing there (no-wait); 408 request expired; 409 with a reason
    (batch completed, max_bytes exceeded, consumer deleted, leadership change, server shutdown,
    or a refusal); 503 no responders.
    """
    code = status.code
    if code == 100:
        return Heartbeat()
    if code == 404:
        return NoMessages()
    if code == 408:
        return RequestExpired()
    if code == 409:
        text = status.description.lower()
        if "batch completed" in text:
            return BatchCompleted()
        if "maxbytes" in text.replace(" ", ""):
            return TooLarge()
        if "deleted" in text:
            return ConsumerDeleted(_pull_refused(status))
        if "leadership" in text or "server shutdown" in text:
            return LeadershipChange(_pull_refused(status))
        return PullRefused(_pull_refused(status))
    if code == 503:
        return NoResponders()
    return PullRefused(Internal(f"pull: unexpected status {code} {status.description}"))


# -- pulls ----------------------------------------------------------------------------------------


class PullPipe:
    """One inbox for pull requests to one consumer; deliveries and statuses come out in order.

    Each request gets its own reply subject below the inbox, so a status that ends an earlier
    request (a late 408, say) is never mistaken for the end of the current one.

    The queue is bounded by ``capacity``: callers never have more messages requested than that,
    and heartbeats that would overflow it are dropped (they carry no data).
    """

    def __init__(
        self,
        nc: NatsClient,
        api_subject: str,
        capacity: int,
        target: str,
        *,
        inflow: Inflow | None = None,
        sizes: SizeHints | None = None,
        stream: str = "",
    ) -> None:
        self._nc = nc
        self._api_subject = api_subject
        #: Flow control (natsgw.adapter.flow): each request reserves what its answer can be,
        #: from the largest message seen on ``stream`` (the server's max_payload until one was).
        self._inflow = inflow
        self._sizes = sizes or SizeHints()
        self._stream = stream
        self._lease: Lease | None = None
        #: What is pulled from, for messages ("consumer C of stream S").
        self.target = target
        self._inbox = ReplyInbox(nc, "pull subscription")
        self._requests = 0
        self._current = ""
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue(maxsize=capacity + 64)

    async def open(self) -> None:
        def on_msg(msg: Msg) -> None:
            lease = self._lease
            if lease is not None and msg.subject == self._current:
                if msg.headers and msg.headers.get("Status"):
                    lease.end()  # a heartbeat or the end: nothing more is queued for it now
                else:
                    size = len(msg.data) + header_bytes(msg.headers) + len(msg.reply or "")
                    lease.arrived(size)
                    self._sizes.saw(self._stream, size)
            try:
                self._queue.put_nowait(msg)
            except asyncio.QueueFull:
                # More arrived than was requested: only status messages can do that. A data
                # message dropped here is redelivered by NATS after ack_wait.
                log.warning("pull_queue_full", subject=self._api_subject, data=bool(msg.data))

        await self._inbox.open(on_msg)

    async def request(
        self,
        batch: int,
        *,
        expires: float = 0.0,
        max_bytes: int = 0,
        heartbeat: float = 0.0,
        no_wait: bool = False,
    ) -> None:
        body: dict[str, Any] = {"batch": batch}
        if expires:
            body["expires"] = _ns(expires)
        if max_bytes:
            body["max_bytes"] = max_bytes
        if heartbeat:
            body["idle_heartbeat"] = _ns(heartbeat)
        if no_wait:
            body["no_wait"] = True
        self._end_lease()
        if self._inflow is not None:
            # At most max_bytes, and at most ``batch`` messages of the largest size seen.
            limit = self._nc.max_payload
            expected = batch * self._sizes.reservation(self._stream, limit)
            if max_bytes:
                expected = min(expected, max_bytes)
            self._lease = await Lease.take(self._inflow, expected, PULL_LEASE_HOLD)
        self._requests += 1
        self._current = self._inbox.subject(self._requests)
        with translated("pull request"):
            await self._nc.publish(
                self._api_subject, json.dumps(body).encode(), reply=self._current
            )

    def interrupt(self) -> None:
        """Make a waiting :meth:`next` return None now."""
        with contextlib.suppress(asyncio.QueueFull):  # full: next() returns at once anyway
            self._queue.put_nowait(None)

    async def next(self, timeout: float) -> PullOutcome | None:
        """The next delivery or outcome of the current request; None when nothing came within
        ``timeout`` (or :meth:`interrupt` was called)."""
        queue = self._queue
        while True:
            if not queue.empty():  # the usual case mid-batch: no timer
                msg = queue.get_nowait()
            else:
                try:
                    # Not wait_for: on Python 3.11 it can swallow a cancellation that coincides
                    # with a message arriving, and the cancelled Consume call would never end.
                    async with asyncio.timeout(max(timeout, 0.0)):
                        msg = await queue.get()
                except TimeoutError:
                    return None
            if msg is None:
                return None
            status = _status(msg)
            if status is not None:
                if msg.subject != self._current:
                    continue  # about an earlier request: already over for us
                return _outcome(status)
            delivery = _delivery(msg)
            if delivery is not None:
                return delivery
            log.warning("pull_unexpected_message", subject=msg.subject)

    def _end_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.end()

    async def close(self) -> None:
        self._end_lease()
        await self._inbox.close()


# -- the adapter ---------------------------------------------------------------------------------


class JetStreamAdapter:
    """JetStream through the gateway's one NATS connection."""

    def __init__(self, core: NatsAdapter, timeout: float = 5.0) -> None:
        self._core = core
        self._timeout = timeout

    def _nc(self) -> NatsClient:
        return self._core.client()

    def client(self) -> NatsClient:
        """The live connection, for this package's readers (Unavailable when down)."""
        return self._core.client()

    @property
    def connected(self) -> bool:
        return self._core.connected

    async def _api(
        self,
        what: str,
        suffix: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """One JetStream API request (``$JS.API.<suffix>``); its JSON answer, or the error."""
        requester = self._core.requester()
        subject = f"{self._core.api_prefix}.{suffix}"
        payload = json.dumps(body).encode() if body is not None else b""
        with translated(what):
            try:
                msg = await requester.request(subject, payload, timeout or self._timeout)
            except NoRespondersError:
                raise Unavailable(f"{what}: JetStream is not enabled or not answering") from None
            response = _json(msg, what)
            if "error" in response:
                raise ApiError.of(response["error"])
        return response

    async def _paged(
        self, what: str, suffix: str, key: str, body: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """Every item of a paged list request (``STREAM.LIST``, ``CONSUMER.LIST``), all pages."""
        items: list[Any] = []
        while True:
            response = await self._api(what, suffix, {**(body or {}), "offset": len(items)})
            page = response.get(key) or []
            items.extend(page)
            if not page or len(items) >= int(response.get("total", 0)):
                return items

    # streams ------------------------------------------------------------------------------------

    async def add_stream(self, spec: StreamSpec) -> StreamDetails:
        response = await self._api(
            f"create stream {spec.name}", f"STREAM.CREATE.{spec.name}", _stream_config(spec)
        )
        return _stream_details(response)

    async def create_stream(
        self, config: Mapping[str, Any], *, what: str, timeout: float | None = None
    ) -> StreamDetails:
        """Create a stream from a ready JetStream config (KV and Object buckets: their configs
        must be byte for byte what the NATS clients make, which :class:`StreamSpec` cannot say)."""
        name = str(config["name"])
        return _stream_details(
            await self._api(what, f"STREAM.CREATE.{name}", config, timeout=timeout)
        )

    async def update_stream(self, spec: StreamSpec) -> StreamDetails:
        response = await self._api(
            f"update stream {spec.name}", f"STREAM.UPDATE.{spec.name}", _stream_config(spec)
        )
        return _stream_details(response)

    async def delete_stream(self, name: str, *, what: str = "") -> None:
        await self._api(what or f"delete stream {name}", f"STREAM.DELETE.{name}")

    async def stream_info(
        self, name: str, *, what: str = "", timeout: float | None = None
    ) -> StreamDetails:
        return _stream_details(
            await self._api(what or f"stream {name}", f"STREAM.INFO.{name}", timeout=timeout)
        )

    async def _stream_infos(self, subject_filter: str = "") -> list[Mapping[str, Any]]:
        """The one stream lister: every stream's info (subjects overlapping the filter, if any)."""
        body = {"subject": subject_filter} if subject_filter else {}
        return await self._paged("list streams", "STREAM.LIST", "streams", body)

    async def list_streams(self, subject_filter: str = "") -> list[StreamDetails]:
        """Every stream (whose subjects overlap ``subject_filter``, if given)."""
        return [_stream_details(info) for info in await self._stream_infos(subject_filter)]

    async def stream_names(self) -> list[str]:
        """The names of every stream."""
        return [_summary(info).name for info in await self._stream_infos()]

    async def stream_summaries(self, prefixes: tuple[str, ...]) -> list[StreamSummary]:
        """Every stream whose name starts with one of ``prefixes`` (for quotas)."""
        found = (_summary(info) for info in await self._stream_infos())
        return [summary for summary in found if summary.name.startswith(prefixes)]

    async def stream_summary(self, name: str) -> StreamSummary | None:
        """The stream, or None when it does not exist."""
        try:
            return _summary(await self._api("stream info", f"STREAM.INFO.{name}"))
        except NotFound:
            return None

    async def limit_stream_bytes(self, name: str, max_bytes: int) -> bool:
        """Lower the stream's byte limit to ``max_bytes`` when unlimited or higher; True if so.

        The stream's own configuration goes back unchanged apart from the limit.
        """
        info = await self._api("stream byte limit", f"STREAM.INFO.{name}")
        config = dict(info.get("config") or {})
        current = int(config.get("max_bytes") or -1)
        if 0 < current <= max_bytes:
            return False
        config["max_bytes"] = max_bytes
        await self._api("stream byte limit", f"STREAM.UPDATE.{name}", config)
        return True

    async def purge_stream(self, name: str, subject_filter: str = "", *, what: str = "") -> int:
        body = {"filter": subject_filter} if subject_filter else {}
        response = await self._api(what or f"purge stream {name}", f"STREAM.PURGE.{name}", body)
        return int(response.get("purged", 0))

    async def stored_time(self, stream: str, seq: int) -> datetime.datetime | None:
        """When NATS stored message ``seq`` (None when it is gone already, or NATS cannot say
        right now: the message is stored, and a failed look-up must not turn that into an error
        that makes the client publish it again)."""
        try:
            response = await self._api("stored message", f"STREAM.MSG.GET.{stream}", {"seq": seq})
        except (NotFound, Unavailable, DeadlineExceeded):
            return None
        return parse_time((response.get("message") or {}).get("time"))

    async def first_seq_since(self, stream: str, since: datetime.datetime) -> int | None:
        """Sequence of the first message stored at or after ``since`` (None: there is none)."""
        try:
            response = await self._api(
                "stored message", f"STREAM.MSG.GET.{stream}", {"start_time": format_time(since)}
            )
        except NotFound:
            return None
        seq = (response.get("message") or {}).get("seq")
        return int(seq) if seq else None

    # consumers ----------------------------------------------------------------------------------

    async def add_consumer(self, stream: str, spec: ConsumerSpec) -> ConsumerDetails:
        """Create; the same config again is a no-op, a different one is ALREADY_EXISTS."""
        name = spec.durable_name or spec.name
        suffix = f"CONSUMER.CREATE.{stream}.{name}" if name else f"CONSUMER.CREATE.{stream}"
        body = {"stream_name": stream, "config": _consumer_config(spec), "action": "create"}
        response = await self._api(
            f"create consumer {name or '(unnamed)'} on stream {stream}", suffix, body
        )
        return _consumer_details(response)

    async def create_ephemeral(self, stream: str, config: Mapping[str, Any]) -> ConsumerDetails:
        """An unnamed consumer from a ready config (the ordered reader's push consumers)."""
        body = {"stream_name": stream, "config": dict(config)}
        response = await self._api(f"consumer on {stream}", f"CONSUMER.CREATE.{stream}", body)
        return _consumer_details(response)

    async def delete_consumer(self, stream: str, name: str) -> None:
        await self._api(
            f"delete consumer {name} of stream {stream}", f"CONSUMER.DELETE.{stream}.{name}"
        )

    async def consumer_info(self, stream: str, name: str) -> ConsumerDetails:
        return _consumer_details(
            await self._api(f"consumer {name} of stream {stream}", f"CONSUMER.INFO.{stream}.{name}")
        )

    async def consumer_exists(self, stream: str, name: str) -> bool:
        try:
            await self._api("consumer info", f"CONSUMER.INFO.{stream}.{name}")
        except NotFound:
            return False
        return True

    async def list_consumers(self, stream: str) -> list[ConsumerDetails]:
        infos = await self._paged(
            f"consumers of stream {stream}", f"CONSUMER.LIST.{stream}", "consumers"
        )
        return [_consumer_details(info) for info in infos]

    # stored messages ----------------------------------------------------------------------------

    async def get_message(
        self,
        stream: str,
        *,
        seq: int = 0,
        subject: str = "",
        what: str,
        timeout: float | None = None,
    ) -> StoredMessage | None:
        """Message ``seq``, or the last one on ``subject``; None when there is none.

        Direct get first (any replica answers; KV and Object buckets are made with it). A stream
        made without direct get has no responder for it, so then the stream leader is asked.
        """
        requester = self._core.requester()
        wait = timeout or self._timeout
        prefix = self._core.api_prefix
        if subject:  # as the NATS clients ask for it: the subject in the request subject, no body
            direct, body = f"{prefix}.DIRECT.GET.{stream}.{subject}", b""
        else:
            direct, body = f"{prefix}.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode()
        core = self._core
        # The answer is at most one message: reserve what this stream's messages were seen to
        # be (the server's max_payload until one was), so that many large reads at once never
        # queue more at nats-server than the gateway's read window (natsgw.adapter.flow).
        expected = core.sizes.reservation(stream, requester.max_payload)
        with translated(what):
            async with core.inflow.reserved(expected):
                try:
                    msg = await requester.request(direct, body, wait)
                except NoRespondersError:
                    msg = None
        if msg is not None:
            core.sizes.saw(stream, len(msg.data) + header_bytes(msg.headers))
            return _direct_message(msg, what)
        request = {"last_by_subj": subject} if subject else {"seq": seq}
        try:
            response = await self._api(what, f"STREAM.MSG.GET.{stream}", request, timeout=timeout)
        except NotFound:
            return None
        return _stored_message(response.get("message") or {})

    # messages -----------------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        stream: str,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        expect_stream: bool = True,
    ) -> StreamPubAck:
        """Store a message; NATS itself refuses it unless ``stream`` is the one capturing it.

        ``expect_stream=False`` leaves out the ``Nats-Expected-Stream`` header (KV and Object
        records are stored exactly as the NATS clients store them); ``stream`` then only names
        the stream in errors and leader checks.
        """
        hdrs = dict(headers or {})
        if expect_stream:
            hdrs["Nats-Expected-Stream"] = stream
        # Checked with every header the gateway adds: nats-server closes a connection that sends
        # more than its max_payload, for every tenant.
        self._core.check_payload(data, hdrs)
        self._core.sizes.saw(stream, len(data) + header_bytes(hdrs))
        requester = self._core.requester()
        budget = timeout or self._timeout
        with translated(f"publish to stream {stream}"):
            try:
                msg = await request_while_leaderless(
                    requester,
                    subject,
                    data,
                    hdrs,
                    budget,
                    gone=lambda: self._stream_gone(stream),
                    leaderless=lambda: self._stream_leaderless(stream),
                )
            except NoRespondersError:
                raise NoStream(
                    f"no stream captures subject {subject!r} (was stream {stream} deleted?)"
                ) from None
            if msg is None:
                raise Unavailable(
                    f"publish to stream {stream}: no server took it within {budget:g}s (the "
                    "stream is electing a leader, or JetStream is unavailable); nothing was "
                    "stored, retry"
                )
            response = _json(msg, f"publish to stream {stream}")
            if "error" in response:
                raise _publish_refused(response["error"], f"publish to stream {stream}")
        return StreamPubAck(
            stream=str(response.get("stream", "")),
            sequence=int(response.get("seq", 0)),
            duplicate=bool(response.get("duplicate", False)),
        )

    async def _stream_leaderless(self, stream: str) -> bool:
        """True when no stream leader answers an info request (so nothing can have been stored:
        storing takes a leader); an answer, even an error, means a leader may have stored."""
        try:
            reply = await self._core.requester().request(
                f"{self._core.api_prefix}.STREAM.INFO.{stream}", b"", LEADER_PROBE_WAIT
            )
            error = json.loads(reply.data).get("error") or {}
        except Exception:  # timeout, no responders, unreadable reply: nobody leads it
            return True
        return bool(error.get("code") == 503)

    async def _stream_gone(self, stream: str) -> bool:
        """True only when JetStream says the stream does not exist; no answer proves nothing."""
        try:
            reply = await self._core.requester().request(
                f"{self._core.api_prefix}.STREAM.INFO.{stream}", b"", 1.0
            )
            error = json.loads(reply.data).get("error") or {}
        except Exception:  # timeout, no responders, unreadable reply
            return False
        return bool(error.get("code") == 404)

    async def publish_many(
        self,
        items: Sequence[tuple[str, bytes, Mapping[str, str]]],
        *,
        stream: str,
        inflight: int,
        timeout: float | None = None,
    ) -> list[StreamPubAck | GatewayError]:
        """Store many messages, ``inflight`` at a time; one result per item, in order.

        A message whose acknowledgement does not come in time is DEADLINE_EXCEEDED: NATS may
        still have stored it (publish it again with the same Nats-Msg-Id to be sure).
        """
        what = f"publish to stream {stream}"
        limit = self._nc().max_payload
        expect = {"Nats-Expected-Stream": stream}
        plain = nats_compat.header_block(expect)  # the block of every message without headers
        requests: list[tuple[str, bytes, bytes] | GatewayError] = []
        for subject, data, headers in items:
            try:
                if not headers and len(data) + len(plain) <= limit:
                    requests.append((subject, data, plain))
                    continue
                hdrs = {**headers, **expect}
                self._core.check_payload(data, hdrs)
                with translated(what):
                    requests.append((subject, data, nats_compat.header_block(hdrs)))
            except GatewayError as exc:
                requests.append(exc)
        replies = await self._publish_windows(requests, inflight, timeout, what)
        prefix = b'{"stream":"' + stream.encode() + b'","seq":'
        results = [
            reply
            if isinstance(reply, GatewayError)
            else _quick_pub_ack(reply.data, prefix, stream)
            or _pub_ack(reply, subject=items[index][0], stream=stream)
            for index, reply in enumerate(replies)
        ]
        await self._leaderless_unavailable(stream, replies, results)
        return results

    async def _leaderless_unavailable(
        self,
        stream: str,
        replies: Sequence[Msg | GatewayError],
        results: list[StreamPubAck | GatewayError],
    ) -> None:
        """Batch items that met "no responders" while the stream exists (a leader election)
        become UNAVAILABLE, nothing stored and retryable, instead of NOT_FOUND; so do items that
        timed out while no leader answers for the stream (storing takes a leader)."""
        leaderless = [
            index
            for index, reply in enumerate(replies)
            if not isinstance(reply, GatewayError) and no_responders(reply)
        ]
        if leaderless and await self._stream_gone(stream):
            leaderless = []
        timed_out = [i for i, r in enumerate(replies) if isinstance(r, DeadlineExceeded)]
        if timed_out and await self._stream_leaderless(stream):
            leaderless += timed_out
        for index in leaderless:
            results[index] = Unavailable(
                f"publish to stream {stream}: no server took it (the stream is electing a "
                "leader); nothing was stored, retry"
            )

    async def ack_many(
        self, acks: Sequence[tuple[str, bytes]], *, inflight: int, timeout: float | None = None
    ) -> list[GatewayError | None]:
        """Send many ack/nak/progress/term and wait until the server processed each one.

        Acks go out ``inflight`` at a time as plain PUBs (nats-py buffers them into few socket
        writes), each with its own reply subject ``<inbox>.<index>`` on one subscription; an ack
        counts as done only once the server's answer to it arrived. Per ack that is one PUB and
        one answer: no future, timer or error-translation frame of its own.
        """
        nc = self._nc()
        wait = timeout or self._timeout
        step = max(inflight, 1)
        what = "acknowledge"
        results: list[GatewayError | None] = [None] * len(acks)
        answers: dict[int, Msg] = {}
        inbox = ReplyInbox(nc, f"{what} (replies)")
        window = _AnswerWindow(inbox.subject(""), answers)
        outstanding = window.outstanding
        await inbox.open(window.on_answer)
        try:
            for start in range(0, len(acks), step):
                stop = min(start + step, len(acks))
                index = start
                try:
                    with translated(what):
                        for index in range(start, stop):
                            subject, payload = acks[index]
                            outstanding.add(index)
                            await nc.publish(subject, payload, reply=inbox.subject(index))
                except GatewayError as exc:  # this one and the rest of the window never left
                    for unsent in range(index, stop):
                        outstanding.discard(unsent)
                        results[unsent] = exc
                # A send may yield (nats-py flushing a full buffer) and answers come in meanwhile.
                await window.answered(results, wait, what)
        finally:
            await inbox.close()
        for index, msg in answers.items():
            if no_responders(msg):
                results[index] = _nobody_acks()
        return results

    async def _publish_windows(
        self,
        requests: Sequence[tuple[str, bytes, bytes] | GatewayError],
        inflight: int,
        timeout: float | None,
        what: str,
    ) -> list[Msg | GatewayError]:
        """``(subject, data, header block)`` requests in windows of ``inflight``, each answered
        on ``<inbox>.<index>`` of one reply subscription; items that are already errors stay.

        A window is queued on the connection as ready-made commands in one piece
        (natsgw.compat.nats.HPubCommands: nats-py's per-message ``publish`` with headers was a
        quarter of a batch's cost) and its answers are counted in as they come, as
        :meth:`ack_many` does: per request one HPUB and one answer, no future or timer.
        """
        nc = self._nc()
        wait = timeout or self._timeout
        step = max(inflight, 1)
        results: list[Msg | GatewayError | None] = [
            r if isinstance(r, GatewayError) else None for r in requests
        ]
        inbox = ReplyInbox(nc, f"{what} (replies)")
        prefix = inbox.subject("")
        answers = _AnswerWindow(prefix, results)
        outstanding = answers.outstanding
        await inbox.open(answers.on_answer)
        commands = nats_compat.HPubCommands(nc)
        add = commands.add_with_headers
        try:
            for start in range(0, len(requests), step):
                window: list[int] = []
                for index in range(start, min(start + step, len(requests))):
                    request = requests[index]
                    if isinstance(request, GatewayError):
                        continue
                    subject, data, block = request
                    try:
                        add(subject, f"{prefix}{index}", block, data)
                    except nats_errors.BadSubjectError as exc:  # what translated() makes of it
                        results[index] = as_gateway_error(what, exc)
                        continue
                    window.append(index)
                if not window:
                    continue
                outstanding.update(window)
                try:
                    with translated(what):
                        await commands.send()
                except GatewayError as exc:  # reported failed: never "stored" unacknowledged
                    for index in window:
                        if index in outstanding:
                            outstanding.discard(index)
                            results[index] = exc
                # A send may yield (nats-py flushing a full buffer) and answers come in meanwhile.
                await answers.answered(results, wait, what)
        finally:
            await inbox.close()
        return [r if r is not None else Internal(f"{what}: no result") for r in results]

    async def open_pull(self, stream: str, consumer: str, capacity: int) -> PullPipe:
        nc = self._nc()
        core = self._core
        pipe = PullPipe(
            nc,
            f"{core.api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            capacity,
            f"consumer {consumer} of stream {stream}",
            inflow=core.inflow,
            sizes=core.sizes,
            stream=stream,
        )
        await pipe.open()
        return pipe

    async def fetch(
        self, stream: str, consumer: str, batch: int, wait: float, max_bytes: int = 0
    ) -> list[JetStreamDelivery]:
        """Up to ``batch`` deliveries: what is there now, else the first to arrive within ``wait``.

        At most ``max_bytes`` as NATS counts deliveries (0: no limit), except that a single
        message larger than that is returned alone. Only one long request is ever open and it
        asks for one message, so nothing is delivered to an inbox the gateway has stopped
        reading (which NATS would count as delivered).
        """
        pipe = await self.open_pull(stream, consumer, batch)
        try:
            got = await self._drain(pipe, batch, no_wait=True, wait=0.0, max_bytes=max_bytes)
            if got:
                return got
            # Nothing there yet, or the next message alone is larger than max_bytes.
            got = await self._drain(pipe, 1, no_wait=wait <= 0, wait=wait)
            room = max_bytes - got[0].nats_size if got and max_bytes else 0
            if got and batch > 1 and (not max_bytes or room > 0):
                more = await self._drain(pipe, batch - 1, no_wait=True, wait=0.0, max_bytes=room)
                got.extend(more)
            return got
        finally:
            await pipe.close()

    async def _drain(
        self, pipe: PullPipe, batch: int, *, no_wait: bool, wait: float, max_bytes: int = 0
    ) -> list[JetStreamDelivery]:
        await pipe.request(batch, expires=wait, no_wait=no_wait, max_bytes=max_bytes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait + _EXPIRY_GRACE + self._timeout
        got: list[JetStreamDelivery] = []
        while len(got) < batch:
            item = await pipe.next(deadline - loop.time())
            if item is None:
                # Neither messages nor the server's end-of-request: the connection is in trouble.
                if not self._core.connected:
                    raise Unavailable("the NATS connection dropped during the pull; retry")
                break
            if isinstance(item, JetStreamDelivery):
                got.append(item)
                continue
            if isinstance(item, Heartbeat):
                continue
            if isinstance(item, (*REQUEST_ENDED, TooLarge)):
                break
            if isinstance(item, NoResponders):  # nothing serves this consumer's pulls
                raise NotFound(f"pull: {pipe.target} does not exist")
            if got:
                break  # refused after delivering: what was delivered is the answer
            raise item.error
        return got

    async def ack(self, reply: str, payload: bytes, timeout: float | None = None) -> None:
        """Send an ack/nak/progress/term and wait until the server has processed it."""
        requester = self._core.requester()
        with translated("acknowledge"):
            try:
                await requester.request(reply, payload, timeout or self._timeout)
            except NoRespondersError:
                raise _nobody_acks() from None

    async def api(
        self,
        what: str,
        suffix: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """One ``$JS.API.<suffix>`` request for the adapter's feature modules
        (natsgw.adapter.consumer_control), through the one request path."""
        return await self._api(what, suffix, body, timeout=timeout)

    # --- dead letters ---

    async def fetch_on(self, pipe: PullPipe, batch: int, wait: float) -> list[JetStreamDelivery]:
        """As :meth:`fetch`, on a pipe the caller keeps open: a long-lived reader (the
        dead-letter relay) holds one NATS subscription for its lifetime, not one per pull."""
        got = await self._drain(pipe, batch, no_wait=True, wait=0.0)
        if got:
            return got
        got = await self._drain(pipe, 1, no_wait=wait <= 0, wait=wait)
        if got and batch > 1:
            got.extend(await self._drain(pipe, batch - 1, no_wait=True, wait=0.0))
        return got


#: What NATS expects on a delivery's ack subject, by action.
_ACK_PAYLOADS = {"ack": b"+ACK", "nak": b"-NAK", "in_progress": b"+WPI", "term": b"+TERM"}


def ack_payload(action: str, delay: float = 0.0, reason: str = "") -> bytes:
    """The body of an ack subject message; a nak may carry a redelivery delay, a term a reason
    (NATS's ``+TERM <reason>``, reported in its terminated advisory)."""
    payload = _ACK_PAYLOADS[action]
    if action == "nak" and delay > 0:
        payload += b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
    elif action == "term" and reason:
        payload += b" " + reason.encode()
    return payload


def _json(msg: Msg, what: str) -> Any:
    """A JetStream API reply's JSON; a reply that is not JSON is reported, not crashed on."""
    try:
        return json.loads(msg.data)
    except ValueError:
        status = (msg.headers or {}).get(_STATUS, "")
        raise Unavailable(
            f"{what}: JetStream answered without a JSON body (status {status or 'none'}); retry"
        ) from None


# -- stream publishes during a leader election ---------------------------------------------------

#: Wait between attempts while nothing takes a stream publish (nats.go's js.Publish: 250 ms).
LEADERLESS_RETRY_WAIT = 0.25
#: How long a timed-out stream publish waits for the stream's info to tell whether it has a leader.
LEADER_PROBE_WAIT = 0.5


async def request_while_leaderless(
    requester: Requester,
    subject: str,
    data: bytes,
    headers: Mapping[str, str],
    budget: float,
    *,
    gone: Callable[[], Awaitable[bool]],
    leaderless: Callable[[], Awaitable[bool]],
) -> Msg | None:
    """A stream publish request, repeated while NATS answers "no responders"; None when the
    budget ran out that way. After the first "no responders" ``gone()`` is asked once: a deleted
    stream is NOT_FOUND at once instead of after the whole budget.

    While a replicated stream elects a leader (seconds, after its leader's server died) no server
    listens on the stream's subjects, so a publish meets "no responders". That proves nothing was
    stored, so sending it again is safe; nats.go's js.Publish does the same (every 250 ms), here
    for as long as the call's budget allows rather than a fixed count. A timeout is not retried:
    the message may have been stored, unless ``leaderless()`` shows no leader answers for the
    stream (a survivor of an election can hold the subject's interest without answering), then
    it counts as "not stored" too.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    attempts = 0
    while True:
        try:
            msg = await requester.request(
                subject, data, max(deadline - loop.time(), 0.001), headers or None
            )
        except NoRespondersError:
            if not attempts and await gone():
                raise
        except TimeoutError:
            if not await leaderless():
                raise
            log.info("stream_publish_leaderless", attempts=attempts + 1, subject=subject)
            return None
        else:
            if attempts:
                log.info("stream_publish_retried", attempts=attempts, subject=subject)
            return msg
        attempts += 1
        # An attempt needs time for an answer: one started just before the deadline would time
        # out, and a timed-out publish "may have been stored" (DEADLINE_EXCEEDED) when every
        # answer so far proved that nothing was.
        if loop.time() + 2 * LEADERLESS_RETRY_WAIT >= deadline:
            log.info("stream_publish_leaderless", attempts=attempts, subject=subject)
            return None
        await asyncio.sleep(LEADERLESS_RETRY_WAIT)


def _nobody_acks() -> FailedPrecondition:
    return FailedPrecondition(
        "nothing takes acknowledgements for this delivery: its consumer was deleted, "
        "or it has ack_policy none (nothing to acknowledge)"
    )


def _publish_refused(error: Mapping[str, Any], what: str) -> Exception:
    """A refused stream publish: a failed expectation header is FAILED_PRECONDITION."""
    refusal = ApiError.of(error)
    if "wrong last" in refusal.description or refusal.err_code in _WRONG_LAST:
        # Nats-Expected-Last-Sequence / -Subject-Sequence / -Msg-Id
        return WrongLastSequence(f"{what}: {refusal.description}")
    if refusal.err_code == _TTL_DISABLED:
        return TTLDisabled(f"{what}: the stream does not allow per-message TTLs")
    return refusal


#: JetStream's error codes for a failed Nats-Expected-Last-(Subject-)Sequence.
_WRONG_LAST = (10071, 10164)
#: JetStream's "per-message TTL is disabled" (a Nats-TTL header on a stream without allow_msg_ttl).
_TTL_DISABLED = 10166


class TTLDisabled(FailedPrecondition):
    """A publish carried a TTL the stream does not allow (its allow_msg_ttl is off)."""


def parse_header_block(block: bytes) -> dict[str, str]:
    """``NATS/1.0\r\nKey: value\r\n...`` (a stored message's ``hdrs``) as a dict."""
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n")[1:]:
        key, colon, value = line.partition(":")
        if colon and key.strip():
            headers[key.strip()] = value.strip()
    return headers


def _direct_message(msg: Msg, what: str) -> StoredMessage | None:
    """A direct get's reply: the message (its headers plus ``Nats-*`` ones), or a status."""
    headers = dict(msg.headers or {})
    status = headers.get(_STATUS)
    if status and not msg.data:
        if status == "404":
            return None
        description = headers.get(_DESCRIPTION, "")
        code = int(status) if status.isdigit() else 0
        with translated(what):
            raise ApiError(code, 0, description or f"direct get answered {status}")
    return StoredMessage(
        subject=headers.get("Nats-Subject", ""),
        data=msg.data or b"",
        headers=headers,
        seq=int(headers.get("Nats-Sequence", "0") or 0),
        time=parse_time(headers.get("Nats-Time-Stamp")),
    )


def _stored_message(raw: Mapping[str, Any]) -> StoredMessage:
    """A ``STREAM.MSG.GET`` answer's message (data and headers base64)."""
    hdrs = raw.get("hdrs")
    data = raw.get("data")
    return StoredMessage(
        subject=str(raw.get("subject", "")),
        data=base64.b64decode(data) if data else b"",
        headers=parse_header_block(base64.b64decode(hdrs)) if hdrs else {},
        seq=int(raw.get("seq", 0)),
        time=parse_time(raw.get("time")),
    )


class Budget:
    """One call's time, shared by the NATS requests it makes (a put that first creates its
    bucket gets the call's whole deadline, not a fixed wait per step)."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(self._end - time.monotonic(), 0.001)


def _quick_pub_ack(data: bytes, prefix: bytes, stream: str) -> StreamPubAck | None:
    """The common PubAck, ``{"stream":"<stream>","seq":N}`` with or without
    ``,"duplicate":true``, read without a JSON parser; None for anything else (an error, a
    domain, another stream, other fields, other spacing), which :func:`_pub_ack` reads in full.
    ``prefix`` is ``{"stream":"<stream>","seq":`` as bytes."""
    if not data.startswith(prefix) or not data.endswith(b"}"):
        return None
    digits = data[len(prefix) : -1]
    duplicate = digits.endswith(_DUPLICATE)
    if duplicate:
        digits = digits[: -len(_DUPLICATE)]
    if not digits.isdigit():  # bytes: ASCII digits only
        return None
    return StreamPubAck(stream=stream, sequence=int(digits), duplicate=duplicate)


_DUPLICATE = b',"duplicate":true'


def _pub_ack(msg: Msg, *, subject: str, stream: str) -> StreamPubAck | GatewayError:
    """A stream publish's reply: its PubAck, or the error NATS (or nobody) answered."""
    if no_responders(msg):
        return NotFound(f"no stream captures subject {subject!r} (was stream {stream} deleted?)")
    try:
        response = json.loads(msg.data)
    except ValueError:
        return Internal(f"publish to stream {stream}: unreadable acknowledgement")
    if "error" in response:  # the rare case pays for the translation
        try:
            with translated(f"publish to stream {stream}"):
                raise _publish_refused(response["error"], f"publish to stream {stream}")
        except GatewayError as exc:
            return exc
    return StreamPubAck(
        stream=str(response.get("stream", "")),
        sequence=int(response.get("seq", 0)),
        duplicate=bool(response.get("duplicate", False)),
    )


def _summary(info: Mapping[str, Any]) -> StreamSummary:
    config = info.get("config") or {}
    return StreamSummary(
        name=str(config.get("name", "")),
        max_bytes=int(config.get("max_bytes") or -1),
        consumers=int((info.get("state") or {}).get("consumer_count") or 0),
    )


def _pull_refused(status: _Status) -> GatewayError:
    text = status.description or "refused"
    lowered = text.lower()
    if "deleted" in lowered:
        return NotFound(f"pull: the consumer was deleted ({text})")
    if "maxwaiting" in lowered.replace(" ", "") or "max_waiting" in lowered:
        return ResourceExhausted(f"pull: too many pulls are waiting on this consumer ({text})")
    return FailedPrecondition(f"pull: NATS refused it ({status.code} {text})")


class _AnswerWindow:
    """Answers to requests sent with reply subjects ``<prefix><index>``, counted in as they come
    (:meth:`JetStreamAdapter.ack_many`, :meth:`JetStreamAdapter._publish_windows`): per request
    one entry in a set, no future or timer. An answer is stored at its index in ``store``."""

    __slots__ = ("_all_in", "_cut", "_store", "outstanding")

    def __init__(self, prefix: str, store: MutableSequence[Any] | MutableMapping[int, Any]) -> None:
        self._cut = len(prefix)
        self._store = store
        self._all_in = asyncio.Event()
        #: Indexes sent and not answered yet (the caller adds them as it sends).
        self.outstanding: set[int] = set()

    def on_answer(self, msg: Msg) -> None:
        token = msg.subject[self._cut :]
        index = int(token) if token.isdigit() else -1
        outstanding = self.outstanding
        if index in outstanding:
            outstanding.discard(index)
            self._store[index] = msg
            if not outstanding:
                self._all_in.set()

    async def answered(self, results: list[Any], wait: float, what: str) -> None:
        """Wait up to ``wait`` seconds until no index is outstanding; the rest are
        DEADLINE_EXCEEDED in ``results``, outcome unknown."""
        outstanding, all_in = self.outstanding, self._all_in
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while outstanding and loop.time() < deadline:
            all_in.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), deadline - loop.time())
        for late in outstanding:
            results[late] = DeadlineExceeded(
                f"{what}: no answer within {wait:g}s; it may or may not have happened"
            )
        outstanding.clear()
