"""JetStream streams, consumers, stream publishes, pulls and acks, as plain values.

Takes NATS names (already mapped by natsgw.tenancy) and returns the dataclasses of
:mod:`natsgw.adapter.types`; every nats-py error leaves as a :class:`natsgw.errors.GatewayError`.
The JetStream API is spoken as JSON directly (nats-py's manager lacks consumer-create semantics,
purge counts and pagination), through nats-py's request machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import NoRespondersError
from nats.js import errors as js_errors

from natsgw.adapter.core import NatsAdapter
from natsgw.adapter.errors import translated
from natsgw.adapter.types import (
    ConsumerDetails,
    ConsumerSpec,
    ConsumerStateValue,
    JetStreamDelivery,
    PullStatus,
    StreamDetails,
    StreamPubAck,
    StreamSpec,
    StreamStateValue,
)
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
_PENDING_MSGS = "Nats-Pending-Messages"
_PENDING_BYTES = "Nats-Pending-Bytes"
#: Extra time a pull request gets beyond its ``expires`` for the server's 408 to arrive.
_EXPIRY_GRACE = 1.0


# -- time and duration helpers ----------------------------------------------------------------


def parse_time(text: str | None) -> datetime.datetime | None:
    """RFC 3339 with up to nanoseconds (as NATS writes it) -> aware datetime; zero time -> None."""
    if not text or text.startswith("0001-01-01"):
        return None
    match = _TIME_RE.match(text)
    if match is None:
        return None
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
        nats_size=len(msg.subject) + len(ack.subject) + _header_len(msg.headers) + len(msg.data),
    )


def _header_len(headers: Mapping[str, str] | None) -> int:
    """Length of the ``NATS/1.0`` header block as nats clients write it."""
    if not headers:
        return 0
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def _status(msg: Msg) -> PullStatus | None:
    headers = msg.headers or {}
    code = headers.get(_STATUS)
    if not code or msg.data:
        return None
    try:
        return PullStatus(
            code=int(code),
            description=headers.get(_DESCRIPTION, ""),
            pending_msgs=int(headers.get(_PENDING_MSGS, 0) or 0),
            pending_bytes=int(headers.get(_PENDING_BYTES, 0) or 0),
        )
    except ValueError:
        return PullStatus(code=int(code) if code.isdigit() else 0, description=str(headers))


# -- pulls ----------------------------------------------------------------------------------------


class PullPipe:
    """One inbox for pull requests to one consumer; deliveries and statuses come out in order.

    Each request gets its own reply subject below the inbox, so a status that ends an earlier
    request (a late 408, say) is never mistaken for the end of the current one.

    The queue is bounded by ``capacity``: callers never have more messages requested than that,
    and heartbeats that would overflow it are dropped (they carry no data).
    """

    def __init__(self, nc: NatsClient, api_subject: str, capacity: int, target: str) -> None:
        self._nc = nc
        self._api_subject = api_subject
        #: What is pulled from, for messages ("consumer C of stream S").
        self.target = target
        self._inbox = nc.new_inbox()
        self._requests = 0
        self._current = ""
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue(maxsize=capacity + 64)
        self._sub: NatsSubscription | None = None

    async def open(self) -> None:
        async def on_msg(msg: Msg) -> None:
            try:
                self._queue.put_nowait(msg)
            except asyncio.QueueFull:
                # More arrived than was requested: only status messages can do that. A data
                # message dropped here is redelivered by NATS after ack_wait.
                log.warning("pull_queue_full", subject=self._api_subject, data=bool(msg.data))

        with translated("pull subscription"):
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=on_msg)

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
        self._requests += 1
        self._current = f"{self._inbox}.{self._requests}"
        with translated("pull request"):
            await self._nc.publish(
                self._api_subject, json.dumps(body).encode(), reply=self._current
            )

    def interrupt(self) -> None:
        """Make a waiting :meth:`next` return None now."""
        with contextlib.suppress(asyncio.QueueFull):  # full: next() returns at once anyway
            self._queue.put_nowait(None)

    async def next(self, timeout: float) -> JetStreamDelivery | PullStatus | None:
        """The next delivery or status; None when nothing came within ``timeout``."""
        while True:
            try:
                # Not wait_for: on Python 3.11 it can swallow a cancellation that coincides with
                # a message arriving, and the cancelled Consume call would never end.
                async with asyncio.timeout(max(timeout, 0.0)):
                    msg = await self._queue.get()
            except TimeoutError:
                return None
            if msg is None:
                return None
            status = _status(msg)
            if status is not None:
                if msg.subject != self._current:
                    continue  # about an earlier request: already over for us
                return status
            delivery = _delivery(msg)
            if delivery is not None:
                return delivery
            log.warning("pull_unexpected_message", subject=msg.subject)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection closed: the server forgot it already
                log.debug("pull_unsubscribe_ignored", error=type(exc).__name__)


# -- the adapter ---------------------------------------------------------------------------------


class JetStreamAdapter:
    """JetStream through the gateway's one NATS connection."""

    def __init__(self, core: NatsAdapter, timeout: float = 5.0) -> None:
        self._core = core
        self._timeout = timeout

    def _nc(self) -> NatsClient:
        return self._core._client()  # same package: the connection the core adapter owns

    def _prefix(self) -> str:
        return str(self._core.jetstream()._prefix)

    async def _api(self, what: str, suffix: str, body: Mapping[str, Any] | None = None) -> Any:
        nc = self._nc()
        subject = f"{self._prefix()}.{suffix}"
        payload = json.dumps(body).encode() if body is not None else b""
        with translated(what):
            try:
                msg = await nc.request(subject, payload, timeout=self._timeout)
            except NoRespondersError:
                raise Unavailable(f"{what}: JetStream is not enabled or not answering") from None
            response = _json(msg, what)
            if "error" in response:
                raise js_errors.APIError.from_error(response["error"])
        return response

    # streams ------------------------------------------------------------------------------------

    async def add_stream(self, spec: StreamSpec) -> StreamDetails:
        response = await self._api(
            f"create stream {spec.name}", f"STREAM.CREATE.{spec.name}", _stream_config(spec)
        )
        return _stream_details(response)

    async def update_stream(self, spec: StreamSpec) -> StreamDetails:
        response = await self._api(
            f"update stream {spec.name}", f"STREAM.UPDATE.{spec.name}", _stream_config(spec)
        )
        return _stream_details(response)

    async def delete_stream(self, name: str) -> None:
        await self._api(f"delete stream {name}", f"STREAM.DELETE.{name}")

    async def stream_info(self, name: str) -> StreamDetails:
        return _stream_details(await self._api(f"stream {name}", f"STREAM.INFO.{name}"))

    async def list_streams(self, subject_filter: str = "") -> list[StreamDetails]:
        """Every stream (whose subjects overlap ``subject_filter``, if given), all pages."""
        streams: list[StreamDetails] = []
        while True:
            body: dict[str, Any] = {"offset": len(streams)}
            if subject_filter:
                body["subject"] = subject_filter
            response = await self._api("list streams", "STREAM.LIST", body)
            page = response.get("streams") or []
            streams.extend(_stream_details(info) for info in page)
            if not page or len(streams) >= int(response.get("total", 0)):
                return streams

    async def purge_stream(self, name: str, subject_filter: str = "") -> int:
        body = {"filter": subject_filter} if subject_filter else {}
        response = await self._api(f"purge stream {name}", f"STREAM.PURGE.{name}", body)
        return int(response.get("purged", 0))

    async def stored_time(self, stream: str, seq: int) -> datetime.datetime | None:
        """When NATS stored message ``seq`` (None when it is gone already)."""
        try:
            response = await self._api("stored message", f"STREAM.MSG.GET.{stream}", {"seq": seq})
        except NotFound:
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

    async def delete_consumer(self, stream: str, name: str) -> None:
        await self._api(
            f"delete consumer {name} of stream {stream}", f"CONSUMER.DELETE.{stream}.{name}"
        )

    async def consumer_info(self, stream: str, name: str) -> ConsumerDetails:
        return _consumer_details(
            await self._api(f"consumer {name} of stream {stream}", f"CONSUMER.INFO.{stream}.{name}")
        )

    async def list_consumers(self, stream: str) -> list[ConsumerDetails]:
        consumers: list[ConsumerDetails] = []
        while True:
            response = await self._api(
                f"consumers of stream {stream}",
                f"CONSUMER.LIST.{stream}",
                {"offset": len(consumers)},
            )
            page = response.get("consumers") or []
            consumers.extend(_consumer_details(info) for info in page)
            if not page or len(consumers) >= int(response.get("total", 0)):
                return consumers

    # messages -----------------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        stream: str,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> StreamPubAck:
        """Store a message; NATS itself refuses it unless ``stream`` is the one capturing it."""
        hdrs = dict(headers or {})
        self._core.check_payload(data, hdrs)
        hdrs["Nats-Expected-Stream"] = stream
        nc = self._nc()
        with translated(f"publish to stream {stream}"):
            try:
                msg = await nc.request(
                    subject, data, timeout=timeout or self._timeout, headers=hdrs
                )
            except NoRespondersError:
                raise NotFound(
                    f"no stream captures subject {subject!r} (was stream {stream} deleted?)"
                ) from None
            response = _json(msg, f"publish to stream {stream}")
            if "error" in response:
                raise _publish_refused(response["error"], f"publish to stream {stream}")
        return StreamPubAck(
            stream=str(response.get("stream", "")),
            sequence=int(response.get("seq", 0)),
            duplicate=bool(response.get("duplicate", False)),
        )

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
        requests: list[tuple[str, bytes, dict[str, str]] | GatewayError] = []
        for subject, data, headers in items:
            hdrs = {**headers, "Nats-Expected-Stream": stream}
            try:
                self._core.check_payload(data, hdrs)
            except GatewayError as exc:
                requests.append(exc)
                continue
            requests.append((subject, data, hdrs))
        replies = await self._request_many(requests, inflight, timeout, what)
        return [
            reply
            if isinstance(reply, GatewayError)
            else _pub_ack(reply, subject=items[index][0], stream=stream)
            for index, reply in enumerate(replies)
        ]

    async def ack_many(
        self, acks: Sequence[tuple[str, bytes]], *, inflight: int, timeout: float | None = None
    ) -> list[GatewayError | None]:
        """Send many ack/nak/progress/term and wait until the server processed each one."""
        requests: list[tuple[str, bytes, dict[str, str]] | GatewayError] = [
            (reply, payload, {}) for reply, payload in acks
        ]
        replies = await self._request_many(requests, inflight, timeout, "acknowledge")
        return [
            reply
            if isinstance(reply, GatewayError)
            else (_nobody_acks() if _no_responders(reply) else None)
            for reply in replies
        ]

    async def _request_many(
        self,
        requests: Sequence[tuple[str, bytes, dict[str, str]] | GatewayError],
        inflight: int,
        timeout: float | None,
        what: str,
    ) -> list[Msg | GatewayError]:
        """Requests in windows of ``inflight``, all answered on one reply subscription.

        Each request replies to ``<inbox>.<n>``, so a request costs one PUB and one reply, not a
        request's own future, timer and subscription lookup. Items that are already errors stay.
        """
        nc = self._nc()
        wait = timeout or self._timeout
        step = max(inflight, 1)
        results: list[Msg | GatewayError | None] = [
            r if isinstance(r, GatewayError) else None for r in requests
        ]
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[Msg]] = {}
        inbox = nc.new_inbox()

        async def on_reply(msg: Msg) -> None:
            future = waiting.pop(int(msg.subject.rpartition(".")[2]), None)
            if future is not None and not future.done():
                future.set_result(msg)

        with translated(f"{what} (replies)"):
            sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
        try:
            for start in range(0, len(requests), step):
                pending: dict[int, asyncio.Future[Msg]] = {}
                for index in range(start, min(start + step, len(requests))):
                    request = requests[index]
                    if isinstance(request, GatewayError):
                        continue
                    subject, data, headers = request
                    future: asyncio.Future[Msg] = loop.create_future()
                    waiting[index] = pending[index] = future
                    try:
                        with translated(what):
                            await nc.publish(
                                subject, data, reply=f"{inbox}.{index}", headers=headers or None
                            )
                    except GatewayError as exc:
                        del waiting[index], pending[index]
                        results[index] = exc
                if pending:
                    await asyncio.wait(pending.values(), timeout=wait)
                for index, future in pending.items():
                    waiting.pop(index, None)
                    results[index] = (
                        future.result()
                        if future.done()
                        else DeadlineExceeded(
                            f"{what}: no answer within {wait:g}s; it may or may not have happened"
                        )
                    )
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection closed: the server forgot it already
                log.debug("reply_unsubscribe_ignored", error=type(exc).__name__)
        return [r if r is not None else Internal(f"{what}: no result") for r in results]

    async def open_pull(self, stream: str, consumer: str, capacity: int) -> PullPipe:
        pipe = PullPipe(
            self._nc(),
            f"{self._prefix()}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            capacity,
            f"consumer {consumer} of stream {stream}",
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
            if item.code == 100:
                continue
            if item.code in (404, 408) or batch_completed(item):
                break
            if item.code == 409:
                if got or exceeds_max_bytes(item):
                    break
                raise _pull_refused(item)
            if item.code == 503:  # no responder: nothing serves this consumer's pulls
                raise NotFound(f"pull: {pipe.target} does not exist")
            raise Internal(f"pull: unexpected status {item.code} {item.description}")
        return got

    async def ack(self, reply: str, payload: bytes, timeout: float | None = None) -> None:
        """Send an ack/nak/progress/term and wait until the server has processed it."""
        nc = self._nc()
        with translated("acknowledge"):
            try:
                await nc.request(reply, payload, timeout=timeout or self._timeout)
            except NoRespondersError:
                raise _nobody_acks() from None


#: What NATS expects on a delivery's ack subject, by action.
_ACK_PAYLOADS = {"ack": b"+ACK", "nak": b"-NAK", "in_progress": b"+WPI", "term": b"+TERM"}


def ack_payload(action: str, delay: float = 0.0) -> bytes:
    """The body of an ack subject message; a nak may carry a redelivery delay."""
    payload = _ACK_PAYLOADS[action]
    if action == "nak" and delay > 0:
        payload += b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
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


def _no_responders(msg: Msg) -> bool:
    return not msg.data and (msg.headers or {}).get(_STATUS) == "503"


def _nobody_acks() -> FailedPrecondition:
    return FailedPrecondition(
        "nothing takes acknowledgements for this delivery: its consumer was deleted, "
        "or it has ack_policy none (nothing to acknowledge)"
    )


def _publish_refused(error: Mapping[str, Any], what: str) -> Exception:
    """A refused stream publish: a failed expectation header is FAILED_PRECONDITION."""
    reason = str(error.get("description", ""))
    if "wrong last" in reason:  # Nats-Expected-Last-Sequence / -Subject-Sequence / -Msg-Id
        return FailedPrecondition(f"{what}: {reason}")
    try:
        js_errors.APIError.from_error(dict(error))  # raises the matching nats-py error
    except js_errors.APIError as exc:
        return exc
    return Internal(f"{what}: {reason or 'refused'}")


def _pub_ack(msg: Msg, *, subject: str, stream: str) -> StreamPubAck | GatewayError:
    """A stream publish's reply: its PubAck, or the error NATS (or nobody) answered."""
    if _no_responders(msg):
        return NotFound(f"no stream captures subject {subject!r} (was stream {stream} deleted?)")
    try:
        with translated(f"publish to stream {stream}"):
            response = json.loads(msg.data)
            if "error" in response:
                raise _publish_refused(response["error"], f"publish to stream {stream}")
    except GatewayError as exc:
        return exc
    except ValueError:
        return Internal(f"publish to stream {stream}: unreadable acknowledgement")
    return StreamPubAck(
        stream=str(response.get("stream", "")),
        sequence=int(response.get("seq", 0)),
        duplicate=bool(response.get("duplicate", False)),
    )


def _pull_refused(status: PullStatus) -> GatewayError:
    text = status.description or "refused"
    lowered = text.lower()
    if "deleted" in lowered:
        return NotFound(f"pull: the consumer was deleted ({text})")
    if "maxwaiting" in lowered.replace(" ", "") or "max_waiting" in lowered:
        return ResourceExhausted(f"pull: too many pulls are waiting on this consumer ({text})")
    return FailedPrecondition(f"pull: NATS refused it ({status.code} {text})")


def batch_completed(status: PullStatus) -> bool:
    """409 "Batch Completed": the server's end of a request whose batch was filled."""
    return status.code == 409 and "batch completed" in status.description.lower()


def exceeds_max_bytes(status: PullStatus) -> bool:
    """409 "Message Size Exceeds MaxBytes": the next message does not fit the request."""
    text = status.description.lower().replace(" ", "")
    return status.code == 409 and "maxbytes" in text


def pull_refusal(status: PullStatus) -> GatewayError:
    """The error a 409 status on a pull stands for (used by continuous consumption)."""
    return _pull_refused(status)
