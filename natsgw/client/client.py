"""The natsgw client: one connection, typed calls, typed errors.

It speaks grpclib with the generated dataclasses and the gateway's own upb codec, and imports
nothing of the server (no nats-py): ``pip install 'natsgw[client]'`` is enough.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from grpclib.client import Channel
from grpclib.const import Cardinality

from natsgw._generated.isa import nats as pb
from natsgw.client import _retry
from natsgw.client._codec import build_codec
from natsgw.client._retry import CONDITIONAL_KV_DELETE, Retry, refused_while_draining, retryable
from natsgw.client._streams import ServerStream
from natsgw.client.consumer import DEFAULT_ACK_WAIT, AckBatcher, Consumer
from natsgw.client.errors import InvalidArgument, NatsgwError, NotFound, translated
from natsgw.client.objects import ObjectDownload, ObjectSource, chunks_of
from natsgw.client.types import (
    AckAction,
    BatchResult,
    ConsumerConfig,
    ConsumerInfo,
    JsMsg,
    KvBucketInfo,
    KvEntry,
    Msg,
    ObjectInfo,
    PubAck,
    Reply,
    StreamConfig,
    StreamInfo,
)

T = TypeVar("T")
log = logging.getLogger("natsgw.client")

_SERVICE = "/isa.nats.NATSService/"
DEFAULT_PORT = 50056
DEFAULT_CHUNK = 128 * 1024
# Most messages per streamed response; only messages already waiting ride together, so this
# costs no latency and saves the per-response HTTP/2 and decoding work when a stream runs busy.
DEFAULT_MAX_BATCH = 100
#: Seconds a connection left to a draining gateway stays open for the calls still running on
#: it (natsgw's NATSGW_SHUTDOWN_GRACE is 10 s by default, 7 s in its container image).
RETIRED_CLOSE_AFTER = 60.0


def tls_context(
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A client TLS context for HTTP/2: trusts ``ca_file`` (else the system CAs) and presents
    ``cert_file``/``key_file`` when the gateway asks for a client certificate (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    context.set_alpn_protocols(["h2"])
    return context


def parse_target(target: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` (port 50056), or ``port``/``:port`` (this machine)."""
    target = target.strip()
    if target.isdigit():
        return _LOCAL, _port(target, target)
    host, sep, port = target.rpartition(":")
    if not sep or "]" in port:
        return target.strip("[]") or _LOCAL, DEFAULT_PORT
    if not port.isdigit():
        raise InvalidArgument(f"target {target[:80]!r}: expected host:port, host or port")
    return host.strip("[]") or _LOCAL, _port(port, target)


#: A bare port means this machine; the IPv4 loopback, as the gateway binds by default.
_LOCAL = "127.0.0.1"


def _port(text: str, target: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise InvalidArgument(f"target {target[:80]!r}: port {port} is not in 1-65535")
    return port


def _msg(m: pb.MessageResponse) -> Msg:
    return Msg(m.subject, m.data, dict(m.headers), m.reply_to, m.sequence, m.timestamp)


def _batch_of(m: pb.MessageResponse) -> list[pb.MessageResponse]:
    return m.batch


def _same(request: T) -> T:
    """Resume a stream with its first request (Subscribe, Consume)."""
    return request


def _seconds(value: float | datetime.timedelta | None) -> datetime.timedelta | None:
    if value is None or isinstance(value, datetime.timedelta):
        return value
    return datetime.timedelta(seconds=value)


class _Subscription:
    """One open Subscribe stream of a client: whether the client has unsubscribed its subject."""

    __slots__ = ("unsubscribed",)

    def __init__(self) -> None:
        self.unsubscribed = False


@dataclass(frozen=True, slots=True)
class _Identity:
    user_id: str
    organization_id: str

    def fields(self) -> dict[str, Any]:
        scope = (
            pb.NamespaceScope.SCOPE_ORGANIZATION
            if self.organization_id
            else pb.NamespaceScope.SCOPE_USER
        )
        return {"user_id": self.user_id, "organization_id": self.organization_id, "scope": scope}


class Client:
    """A connection to one gateway. Use ``async with await connect(...)`` or call ``close()``.

    Credentials: ``token`` is sent as ``authorization: Bearer`` (an API token or a JWT);
    ``user_id`` names the caller in trusted mode (or whom to act for, with the act-as role);
    ``organization_id`` makes every call work in that organization's namespace (see
    :meth:`in_organization` for one client serving both).

    ``retry`` bounds how unary calls are repeated after UNAVAILABLE (only idempotent RPCs, or
    requests that never left); ``stream_retry`` how a broken Subscribe, Consume or KVWatch is
    opened again (KVWatch from its last revision). ``_retry.NEVER`` turns either off; the rule
    is in :mod:`natsgw.client._retry`.
    """

    def __init__(
        self,
        target: str = f"127.0.0.1:{DEFAULT_PORT}",
        *,
        token: str = "",
        user_id: str = "",
        organization_id: str = "",
        tls: ssl.SSLContext | bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        timeout: float | None = 30.0,
        metadata: Mapping[str, str] | None = None,
        retry: Retry = _retry.UNARY,
        stream_retry: Retry = _retry.STREAM,
        _channel: Channel | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self.stream_retry = stream_retry
        #: Open Subscribe streams by (organization, subject): one that the gateway ends after
        #: this client unsubscribed it is over; any other end (the gateway restarting) is
        #: resumed. A stream leaves it when it closes, so it holds only what is open.
        self._subscribed: dict[tuple[str, str], set[_Subscription]] = {}
        self._identity = _Identity(user_id, organization_id)
        self._metadata = dict(metadata or {})
        if token:
            self._metadata["authorization"] = f"Bearer {token}"
        #: Makes a new connection to the same gateway (None: the caller gave the channel).
        self._connect: Callable[[], Channel] | None = None
        #: Connections this client made and closes: the current one, and those left to a
        #: draining gateway (its calls in flight finish there; see :meth:`_reconnect`).
        self._owned: list[Channel] = []
        if _channel is None:
            host, port = parse_target(target)
            context: ssl.SSLContext | None = None
            if isinstance(tls, ssl.SSLContext):
                context = tls
            elif tls or ca_file or cert_file:
                context = tls_context(ca_file, cert_file, key_file)

            def connect() -> Channel:
                return Channel(host, port, ssl=context, codec=build_codec())

            self._connect = connect
            _channel = connect()
            self._owned.append(_channel)
        self._channel = _channel
        self._stub = pb.NatsServiceStub(_channel, timeout=timeout, metadata=self._metadata)

    def in_organization(self, organization_id: str) -> Client:
        """The same connection, working in ``organization_id``'s namespace ("" for your own)."""
        other = Client(
            self.target,
            user_id=self._identity.user_id,
            organization_id=organization_id,
            timeout=self.timeout,
            metadata=self._metadata,
            retry=self.retry,
            stream_retry=self.stream_retry,
            _channel=self._channel,
        )
        other._subscribed = self._subscribed
        other._connect = self._connect  # its own new connection when it must reconnect
        return other

    def close(self) -> None:
        for channel in self._owned:
            channel.close()
        self._owned.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def stub(self) -> pb.NatsServiceStub:
        """The generated stub on this connection, for calls this class does not wrap.

        Its requests need the identity fields: ``pb.XRequest(**client.identity(), ...)``.
        """
        return self._stub

    def identity(self) -> dict[str, Any]:
        """``user_id``, ``organization_id`` and ``scope`` as every request carries them."""
        return self._identity.fields()

    def _ids(self) -> dict[str, Any]:
        return self._identity.fields()

    async def _call(
        self, rpc: str, make: Callable[[], Awaitable[T]], retry: Retry | None = None
    ) -> T:
        """One unary call, repeated after UNAVAILABLE when :func:`retryable` allows it."""
        delays = (retry or self.retry).delays()
        while True:
            channel = self._channel
            try:
                async with translated():
                    return await make()
            except NatsgwError as exc:
                delay = next(delays, None)
                if delay is None or not retryable(rpc, exc):
                    raise
                if refused_while_draining(exc):
                    self._reconnect(channel)
                log.info("%s failed (%s); retrying in %.2f s", rpc, exc, delay)
                await asyncio.sleep(delay)

    def _reconnect(self, refused: Channel) -> None:
        """New calls go on a new connection (``refused``'s gateway is shutting down); nothing
        to do if the client has moved on from ``refused`` already (several calls and streams
        refused at once make one new connection, not one each).

        The old connection is not closed now: calls still in flight on it (a Publish, a
        Request) finish there within the gateway's grace, where closing it would fail them
        with an unknown outcome. It is closed :data:`RETIRED_CLOSE_AFTER` seconds later (the
        gateway has closed it by then), or with the client. A channel the caller gave is
        closed instead (grpclib connects it again on the next call).
        """
        if refused is not self._channel:
            return
        if self._connect is None:
            self._channel.close()
            return
        self._channel = self._connect()
        self._owned.append(self._channel)
        self._stub = pb.NatsServiceStub(
            self._channel, timeout=self.timeout, metadata=self._metadata
        )
        asyncio.get_running_loop().call_later(RETIRED_CLOSE_AFTER, self._retire, refused)

    def _retire(self, channel: Channel) -> None:
        if channel in self._owned:
            self._owned.remove(channel)
            channel.close()

    def _stream(
        self,
        method: str,
        request: Any,
        response_type: type[Any],
        convert: Any,
        timeout: float | None = None,
        riders: Any = None,
        *,
        resume: Callable[[Any], Any] | None = None,
        ended_early: Callable[[], bool] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> ServerStream[Any, Any, Any]:
        """A server stream; with ``resume`` it is opened again when it breaks (stream_retry)."""
        return ServerStream(
            lambda: self._channel,  # the current connection, also after a reconnect
            _SERVICE + method,
            request,
            response_type,
            convert,
            self._metadata,
            timeout,
            riders,
            retry=self.stream_retry if resume is not None else None,
            resume=resume,
            ended_early=ended_early,
            reconnect=self._reconnect,
            on_close=on_close,
        )

    def _subscription(self, subject: str) -> tuple[_Subscription, Callable[[], None]]:
        """A Subscribe stream's entry (an OK end is early unless this client unsubscribed it
        since), and what removes the entry when the stream closes."""
        key = (self._identity.organization_id, subject)
        entry = _Subscription()
        self._subscribed.setdefault(key, set()).add(entry)

        def forget() -> None:
            entries = self._subscribed.get(key)
            if entries is not None:
                entries.discard(entry)
                if not entries:
                    del self._subscribed[key]

        return entry, forget

    # ---- health --------------------------------------------------------------------------

    async def health(self, deep: bool = False) -> pb.NatsHealthCheckResponse:
        return await self._call(
            "HealthCheck",
            lambda: self._stub.health_check(pb.NatsHealthCheckRequest(deep_check=deep)),
        )

    async def statistics(self) -> pb.GetStatisticsResponse:
        return await self._call(
            "GetStatistics",
            lambda: self._stub.get_statistics(pb.GetStatisticsRequest(**self._ids())),
        )

    # ---- core messaging ------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        reply_to: str = "",
    ) -> None:
        """Returns once the NATS server has the message (the gateway confirms it)."""
        await self._call(
            "Publish",
            lambda: self._stub.publish(
                pb.PublishRequest(
                    subject=subject,
                    data=data,
                    headers=dict(headers or {}),
                    reply_to=reply_to,
                    **self._ids(),
                )
            ),
        )

    async def publish_batch(
        self, messages: Iterable[tuple[str, bytes] | tuple[str, bytes, Mapping[str, str]]]
    ) -> BatchResult:
        """Publish many in one call: ``(subject, data)`` or ``(subject, data, headers)`` each.

        Refused messages are reported in ``errors`` (the rest are published), not raised.
        """
        batch = [
            pb.NatsMessage(subject=m[0], data=m[1], headers=dict(m[2]) if len(m) > 2 else {})
            for m in messages
        ]
        answer = await self._call(
            "PublishBatch",
            lambda: self._stub.publish_batch(pb.PublishBatchRequest(messages=batch, **self._ids())),
        )
        return BatchResult(answer.published_count, tuple(answer.errors))

    def subscribe(
        self, subject: str, *, queue_group: str = "", max_batch: int = DEFAULT_MAX_BATCH
    ) -> ServerStream[Any, Any, Msg]:
        """``async for msg in client.subscribe("orders.*")``.

        Use ``async with client.subscribe(...) as sub`` to know the subscription is live before
        publishing, and to end it when the block ends. Messages already waiting on the gateway
        arrive up to ``max_batch`` per response (1: one each); the iterator yields them one by one.

        If the gateway restarts, the subscription is made again (messages published meanwhile
        are lost: core NATS keeps nothing); it ends when this client unsubscribes the subject,
        and raises ``Unavailable`` when it cannot be made again within ``stream_retry``.
        """
        entry, forget = self._subscription(subject)
        request: pb.QueueSubscribeRequest | pb.SubscribeRequest
        if queue_group:  # NATS shares the messages among the group's subscribers
            method, request = (
                "QueueSubscribe",
                pb.QueueSubscribeRequest(
                    subject=subject, queue_group=queue_group, max_batch=max_batch, **self._ids()
                ),
            )
        else:
            method = "Subscribe"
            request = pb.SubscribeRequest(subject=subject, max_batch=max_batch, **self._ids())
        return self._stream(
            method,
            request,
            pb.MessageResponse,
            _msg,
            None,
            _batch_of,
            resume=_same,
            ended_early=lambda: not entry.unsubscribed,
            on_close=forget,
        )

    async def unsubscribe(self, subject: str) -> bool:
        """End this tenant's subscriptions on ``subject`` on the gateway; False if none was open."""
        for entry in self._subscribed.pop((self._identity.organization_id, subject), ()):
            entry.unsubscribed = True
        answer = await self._call(
            "Unsubscribe",
            lambda: self._stub.unsubscribe(pb.UnsubscribeRequest(subject=subject, **self._ids())),
        )
        return answer.success

    async def request(
        self,
        subject: str,
        data: bytes = b"",
        *,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Request/reply; Unavailable if nobody listens, DeadlineExceeded if no answer in time."""
        answer = await self._call(
            "Request",
            lambda: self._stub.request(
                pb.RequestRequest(
                    subject=subject,
                    data=data,
                    timeout=datetime.timedelta(seconds=timeout),
                    headers=dict(headers or {}),
                    **self._ids(),
                ),
                timeout=timeout + 5.0,
            ),
        )
        return Reply(answer.data, dict(answer.headers))

    # ---- JetStream streams and consumers -------------------------------------------------

    async def create_stream(
        self,
        name: str,
        subjects: Sequence[str] = (),
        *,
        config: StreamConfig | None = None,
    ) -> StreamInfo:
        """Create (or confirm, if identical) a stream; ``config`` gives every other option."""
        cfg = config or StreamConfig()
        cfg.name = name
        if subjects:
            cfg.subjects = list(subjects)
        answer = await self._call(
            "CreateStream",
            lambda: self._stub.create_stream(pb.CreateStreamRequest(config=cfg, **self._ids())),
        )
        assert answer.stream is not None
        return answer.stream

    async def update_stream(self, name: str, config: StreamConfig) -> StreamInfo:
        config.name = name
        answer = await self._call(
            "UpdateStream",
            lambda: self._stub.update_stream(
                pb.UpdateStreamRequest(stream_name=name, config=config, **self._ids())
            ),
        )
        assert answer.stream is not None
        return answer.stream

    async def delete_stream(self, name: str) -> None:
        await self._call(
            "DeleteStream",
            lambda: self._stub.delete_stream(
                pb.DeleteStreamRequest(stream_name=name, **self._ids())
            ),
        )

    async def stream_info(self, name: str) -> StreamInfo:
        answer = await self._call(
            "GetStreamInfo",
            lambda: self._stub.get_stream_info(
                pb.GetStreamInfoRequest(stream_name=name, **self._ids())
            ),
        )
        assert answer.stream is not None
        return answer.stream

    async def streams(self) -> list[StreamInfo]:
        answer = await self._call(
            "ListStreams", lambda: self._stub.list_streams(pb.ListStreamsRequest(**self._ids()))
        )
        return list(answer.streams)

    async def purge_stream(self, name: str, subject: str = "") -> int:
        """Remove messages (only those on ``subject`` if given); returns how many."""
        answer = await self._call(
            "PurgeStream",
            lambda: self._stub.purge_stream(
                pb.PurgeStreamRequest(stream_name=name, subject=subject, **self._ids())
            ),
        )
        return answer.purged_count

    async def stream_stats(self, name: str) -> pb.GetStreamStatsResponse:
        return await self._call(
            "GetStreamStats",
            lambda: self._stub.get_stream_stats(
                pb.GetStreamStatsRequest(stream_name=name, **self._ids())
            ),
        )

    async def create_consumer(
        self, stream: str, durable_name: str = "", *, config: ConsumerConfig | None = None
    ) -> ConsumerInfo:
        """A pull consumer: durable with ``durable_name``, else as ``config`` says."""
        cfg = config or ConsumerConfig()
        if durable_name:
            cfg.durable_name = durable_name
        answer = await self._call(
            "CreateConsumer",
            lambda: self._stub.create_consumer(
                pb.CreateConsumerRequest(stream_name=stream, config=cfg, **self._ids())
            ),
        )
        assert answer.consumer is not None
        return answer.consumer

    async def delete_consumer(self, stream: str, consumer: str) -> None:
        await self._call(
            "DeleteConsumer",
            lambda: self._stub.delete_consumer(
                pb.DeleteConsumerRequest(stream_name=stream, consumer_name=consumer, **self._ids())
            ),
        )

    async def consumer_info(self, stream: str, consumer: str) -> ConsumerInfo:
        answer = await self._call(
            "GetConsumerInfo",
            lambda: self._stub.get_consumer_info(
                pb.GetConsumerInfoRequest(stream_name=stream, consumer_name=consumer, **self._ids())
            ),
        )
        assert answer.consumer is not None
        return answer.consumer

    async def consumers(self, stream: str) -> list[ConsumerInfo]:
        answer = await self._call(
            "ListConsumers",
            lambda: self._stub.list_consumers(
                pb.ListConsumersRequest(stream_name=stream, **self._ids())
            ),
        )
        return list(answer.consumers)

    # ---- JetStream messages --------------------------------------------------------------

    async def publish_to_stream(
        self,
        subject: str,
        data: bytes = b"",
        *,
        stream: str = "",
        headers: Mapping[str, str] | None = None,
        msg_id: str = "",
    ) -> PubAck:
        """Store a message; ``msg_id`` de-duplicates retries within the stream's window."""
        hdrs = dict(headers or {})
        if msg_id:
            hdrs["Nats-Msg-Id"] = msg_id
        answer = await self._call(
            "PublishToStream",
            lambda: self._stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    stream_name=stream, subject=subject, data=data, headers=hdrs, **self._ids()
                )
            ),
        )
        return PubAck(answer.sequence, answer.duplicate, answer.timestamp)

    async def publish_to_stream_batch(
        self, stream: str, messages: Iterable[pb.StreamMessage | tuple[str, bytes]]
    ) -> list[PubAck]:
        """Many stores in one call; one result per message, in order (``error`` when refused)."""
        batch = [
            m if isinstance(m, pb.StreamMessage) else pb.StreamMessage(subject=m[0], data=m[1])
            for m in messages
        ]
        answer = await self._call(
            "PublishToStreamBatch",
            lambda: self._stub.publish_to_stream_batch(
                pb.PublishToStreamBatchRequest(stream_name=stream, messages=batch, **self._ids())
            ),
        )
        return [PubAck(r.sequence, r.duplicate, None, r.error) for r in answer.results]

    async def pull(
        self, stream: str, consumer: str, batch: int = 1, *, max_wait: float = 5.0
    ) -> list[JsMsg]:
        """Up to ``batch`` messages, as soon as any are there (empty after ``max_wait``).

        Acknowledge them with :meth:`ack`; :meth:`consume` does that for you, batched.
        """
        answer = await self._call(
            "PullMessages",
            lambda: self._stub.pull_messages(
                pb.PullMessagesRequest(
                    stream_name=stream,
                    consumer_name=consumer,
                    batch_size=batch,
                    max_wait=datetime.timedelta(seconds=max_wait),
                    **self._ids(),
                ),
                timeout=max_wait + 10.0,
            ),
        )
        return [JsMsg.from_wire(m) for m in answer.messages]

    async def ack(
        self,
        *messages: JsMsg,
        action: AckAction = AckAction.ACK,
        nak_delay: float | datetime.timedelta | None = None,
    ) -> int:
        """Settle pulled messages in one call; returns how many the gateway accepted."""
        answer = await self._ack_tokens(
            [m.ack_token for m in messages], action, _seconds(nak_delay)
        )
        return answer.succeeded

    async def _ack_tokens(
        self, tokens: list[str], action: AckAction, delay: datetime.timedelta | None
    ) -> pb.AckMessagesResponse:
        return await self._call(
            "AckMessages",
            lambda: self._stub.ack_messages(
                pb.AckMessagesRequest(
                    ack_tokens=tokens, action=action, nak_delay=delay, **self._ids()
                )
            ),
        )

    def consume(
        self,
        stream: str,
        consumer: str,
        *,
        max_messages: int = 100,
        max_bytes: int = 0,
        heartbeat: float = 5.0,
        ack_batch: int = 256,
        ack_interval: float = 0.05,
        max_lease: float = 3600.0,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> Consumer:
        """``async with client.consume(s, c) as messages: async for msg in messages: msg.ack()``.

        At most ``max_messages`` (and ``max_bytes``) are outstanding; acks are batched and unsettled
        messages have their ack deadline extended for up to ``max_lease`` seconds (see
        :mod:`natsgw.client.consumer`). Waiting messages arrive up to ``max_batch`` per response.
        When the block ends, what was delivered but not settled is nak'ed (redelivered at once).
        If the gateway restarts, the stream is opened again (``stream_retry``); the ack tokens
        of messages held stay valid only if the gateway's NATSGW_ACK_TOKEN_SECRET is set (the
        default is random per process): otherwise their acks fail (counted in ``failed``,
        logged) and NATS redelivers them after ``ack_wait``.
        """
        request = pb.ConsumeRequest(
            stream_name=stream,
            consumer_name=consumer,
            max_messages=max_messages,
            max_bytes=max_bytes,
            heartbeat=datetime.timedelta(seconds=heartbeat),
            max_batch=max_batch,
            **self._ids(),
        )

        async def ack_wait() -> float:
            info = await self.consumer_info(stream, consumer)
            wait = info.config.ack_wait if info.config is not None else None
            return wait.total_seconds() if wait else DEFAULT_ACK_WAIT

        def batcher(wait: float) -> AckBatcher:
            return AckBatcher(
                self._ack_tokens,
                ack_batch=min(ack_batch, max(1, max_messages // 2)),
                ack_interval=ack_interval,
                ack_wait=wait,
                max_lease=max_lease,
            )

        stream_call = self._stream(
            "Consume",
            request,
            pb.ConsumeResponse,
            lambda r: r,
            resume=_same,
            ended_early=lambda: True,  # a Consume stream ends only when the gateway stops
        )
        return Consumer(stream_call, ack_wait, batcher)

    # ---- Key-Value -----------------------------------------------------------------------

    async def kv_get(self, bucket: str, key: str, *, revision: int = 0) -> KvEntry | None:
        """The key's latest value (or ``revision``); None when the key or bucket is missing."""
        answer = await self._call(
            "KVGet",
            lambda: self._stub.kv_get(
                pb.KvGetRequest(bucket=bucket, key=key, revision=revision, **self._ids())
            ),
        )
        if not answer.found:
            return None
        return KvEntry(
            key=key, value=answer.value, revision=answer.revision, created=answer.created
        )

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Store ``value`` (the bucket is made on first put); returns the new revision."""
        answer = await self._call(
            "KVPut",
            lambda: self._stub.kv_put(
                pb.KvPutRequest(bucket=bucket, key=key, value=value, **self._ids())
            ),
        )
        return answer.revision

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        """Put only if the key does not exist; AlreadyExists otherwise."""
        answer = await self._call(
            "KVCreate",
            lambda: self._stub.kv_create(
                pb.KvCreateRequest(bucket=bucket, key=key, value=value, **self._ids())
            ),
        )
        return answer.revision

    async def kv_update(self, bucket: str, key: str, value: bytes, revision: int) -> int:
        """Compare-and-set: put only if the key is at ``revision``; FailedPrecondition otherwise."""
        answer = await self._call(
            "KVUpdate",
            lambda: self._stub.kv_update(
                pb.KvUpdateRequest(
                    bucket=bucket, key=key, value=value, expected_revision=revision, **self._ids()
                )
            ),
        )
        return answer.revision

    async def kv_delete(
        self, bucket: str, key: str, *, revision: int = 0, purge: bool = False
    ) -> None:
        """Delete (``purge``: with its history); with ``revision``, only if the key is at it.

        A conditional delete is not repeated after it reached the gateway: had the first one
        succeeded, the repeat would fail (FailedPrecondition) although the key is deleted.
        """
        await self._call(
            "KVDelete" if not revision else CONDITIONAL_KV_DELETE,
            lambda: self._stub.kv_delete(
                pb.KvDeleteRequest(
                    bucket=bucket, key=key, expected_revision=revision, purge=purge, **self._ids()
                )
            ),
        )

    async def kv_keys(self, bucket: str) -> list[str]:
        answer = await self._call(
            "KVKeys", lambda: self._stub.kv_keys(pb.KvKeysRequest(bucket=bucket, **self._ids()))
        )
        return list(answer.keys)

    async def kv_history(self, bucket: str, key: str) -> list[KvEntry]:
        answer = await self._call(
            "KVHistory",
            lambda: self._stub.kv_history(
                pb.KvHistoryRequest(bucket=bucket, key=key, **self._ids())
            ),
        )
        return list(answer.entries)

    def kv_watch(
        self, bucket: str, key: str = "", *, from_revision: int = 0, updates_only: bool = False
    ) -> ServerStream[Any, Any, KvEntry]:
        """``async for entry in client.kv_watch("cfg", "app.*")``: current values, then changes.

        If the gateway restarts, the watch is opened again from the revision after the last one
        it delivered, so no change is missed or repeated (``stream_retry``); with
        ``updates_only``, a change made while the gateway was away before the watch delivered
        anything is missed (there is no revision to resume from yet).
        """
        request = pb.KvWatchRequest(
            bucket=bucket,
            key=key,
            from_revision=from_revision,
            updates_only=updates_only,
            **self._ids(),
        )
        last = [0]

        def seen(entry: pb.KvEntry) -> pb.KvEntry:
            last[0] = max(last[0], entry.revision)
            return entry

        def resume(previous: pb.KvWatchRequest) -> pb.KvWatchRequest:
            if not last[0]:
                return previous  # nothing delivered yet: the same start
            return dataclasses.replace(previous, from_revision=last[0] + 1, updates_only=False)

        return self._stream(
            "KVWatch", request, pb.KvEntry, seen, resume=resume, ended_early=lambda: True
        )

    async def kv_create_bucket(
        self,
        bucket: str,
        *,
        history: int = 0,
        ttl: float = 0.0,
        max_bytes: int = 0,
    ) -> KvBucketInfo:
        answer = await self._call(
            "KVCreateBucket",
            lambda: self._stub.kv_create_bucket(
                pb.KvCreateBucketRequest(
                    bucket=bucket,
                    history=history,
                    ttl=datetime.timedelta(seconds=ttl) if ttl else None,
                    max_bytes=max_bytes,
                    **self._ids(),
                )
            ),
        )
        assert answer.bucket is not None
        return answer.bucket

    async def kv_delete_bucket(self, bucket: str) -> None:
        await self._call(
            "KVDeleteBucket",
            lambda: self._stub.kv_delete_bucket(
                pb.KvDeleteBucketRequest(bucket=bucket, **self._ids())
            ),
        )

    async def kv_buckets(self) -> list[KvBucketInfo]:
        answer = await self._call(
            "KVListBuckets",
            lambda: self._stub.kv_list_buckets(pb.KvListBucketsRequest(**self._ids())),
        )
        return list(answer.buckets)

    async def kv_bucket_status(self, bucket: str) -> KvBucketInfo:
        answer = await self._call(
            "KVBucketStatus",
            lambda: self._stub.kv_bucket_status(
                pb.KvBucketStatusRequest(bucket=bucket, **self._ids())
            ),
        )
        assert answer.bucket is not None
        return answer.bucket

    # ---- Object store --------------------------------------------------------------------

    async def put_object(
        self,
        bucket: str,
        name: str,
        source: ObjectSource,
        *,
        metadata: Mapping[str, str] | None = None,
        sha256: str = "",
        chunk_size: int = DEFAULT_CHUNK,
    ) -> ObjectInfo:
        """Upload from bytes, a file path, a binary file or an (async) iterable of chunks.

        Streamed through ``ObjectPutStream`` in ``chunk_size`` pieces, so memory stays flat
        whatever the size. With ``sha256`` (64 hex digits) the gateway stores nothing unless
        the content matches (DataLoss).
        """
        if isinstance(source, str | os.PathLike):
            # Opened here, so a missing file is the caller's FileNotFoundError, not a failed call.
            with open(source, "rb") as handle:  # noqa: ASYNC230 - chunks_of reads in a thread
                return await self.put_object(
                    bucket, name, handle, metadata=metadata, sha256=sha256, chunk_size=chunk_size
                )
        header = pb.ObjectPutHeader(
            bucket=bucket,
            object_name=name,
            metadata=dict(metadata or {}),
            sha256=sha256,
            **self._ids(),
        )
        async with (
            translated(),
            self._channel.request(
                _SERVICE + "ObjectPutStream",
                Cardinality.STREAM_UNARY,
                pb.ObjectPutStreamRequest,
                pb.ObjectPutResponse,
                timeout=None,
                metadata=self._metadata,
            ) as call,
        ):
            first: pb.ObjectPutStreamRequest | None = pb.ObjectPutStreamRequest(header=header)
            async for chunk in chunks_of(source, chunk_size):
                if first is not None:
                    first.chunk = chunk
                    await call.send_message(first)
                    first = None
                else:
                    await call.send_message(pb.ObjectPutStreamRequest(chunk=chunk))
            if first is not None:  # empty object: the header alone
                await call.send_message(first)
            await call.end()
            answer: pb.ObjectPutResponse | None = await call.recv_message()
        assert answer is not None and answer.info is not None
        return answer.info

    @asynccontextmanager
    async def get_object(self, bucket: str, name: str) -> AsyncIterator[ObjectDownload]:
        """``async with client.get_object(b, n) as obj: obj.info; async for chunk in obj``.

        NotFound when the object (or bucket) is missing.
        """
        request = pb.ObjectGetRequest(bucket=bucket, object_name=name, **self._ids())
        stream: ServerStream[Any, pb.ObjectGetStreamResponse, Any] = self._stream(
            "ObjectGetStream", request, pb.ObjectGetStreamResponse, lambda r: r, timeout=None
        )
        async with stream:
            head = await stream.next_response()
            if head is None or not head.found or head.info is None:
                raise NotFound(f"object {name!r} not found in bucket {bucket!r}")
            yield ObjectDownload(head.info, head.chunk, stream)

    async def get_object_bytes(self, bucket: str, name: str) -> bytes:
        async with self.get_object(bucket, name) as obj:
            return b"".join([chunk async for chunk in obj])

    async def download(self, bucket: str, name: str, path: str | os.PathLike[str]) -> ObjectInfo:
        """Write the object to ``path`` (via a temporary file, renamed once complete)."""
        async with self.get_object(bucket, name) as obj:
            await obj.save(Path(path))
            return obj.info

    async def delete_object(self, bucket: str, name: str) -> None:
        await self._call(
            "ObjectDelete",
            lambda: self._stub.object_delete(
                pb.ObjectDeleteRequest(bucket=bucket, object_name=name, **self._ids())
            ),
        )

    async def objects(self, bucket: str) -> list[ObjectInfo]:
        """The bucket's objects, sorted by name; NotFound when there is no such bucket."""
        answer = await self._call(
            "ObjectList",
            lambda: self._stub.object_list(pb.ObjectListRequest(bucket=bucket, **self._ids())),
        )
        return list(answer.objects)

    # ---- consumer control and TTL --------------------------------------------------------

    async def update_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo:
        """Change an existing consumer (named by ``config``) where NATS allows it."""
        answer = await self._call(
            "UpdateConsumer",
            lambda: self._stub.update_consumer(
                pb.UpdateConsumerRequest(stream_name=stream, config=config, **self._ids())
            ),
        )
        assert answer.consumer is not None
        return answer.consumer

    async def pause_consumer(
        self, stream: str, consumer: str, until: datetime.datetime
    ) -> pb.PauseConsumerResponse:
        """No deliveries until ``until`` (an aware time in the future)."""
        return await self._call(
            "PauseConsumer",
            lambda: self._stub.pause_consumer(
                pb.PauseConsumerRequest(
                    stream_name=stream, consumer_name=consumer, pause_until=until, **self._ids()
                )
            ),
        )

    async def resume_consumer(self, stream: str, consumer: str) -> pb.PauseConsumerResponse:
        return await self._call(
            "ResumeConsumer",
            lambda: self._stub.resume_consumer(
                pb.ResumeConsumerRequest(stream_name=stream, consumer_name=consumer, **self._ids())
            ),
        )

    async def reset_consumer(
        self,
        stream: str,
        consumer: str,
        *,
        sequence: int = 0,
        time: datetime.datetime | None = None,
    ) -> pb.ResetConsumerResponse:
        """Seek: deliver next from stream ``sequence`` or the first message at/after ``time``
        (neither: the consumer's configured start)."""
        return await self._call(
            "ResetConsumer",
            lambda: self._stub.reset_consumer(
                pb.ResetConsumerRequest(
                    stream_name=stream,
                    consumer_name=consumer,
                    sequence=sequence,
                    time=time,
                    **self._ids(),
                )
            ),
        )

    async def publish_with_ttl(
        self,
        subject: str,
        data: bytes = b"",
        *,
        ttl: float | None = None,
        never: bool = False,
        stream: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> PubAck:
        """Store a message that NATS removes after ``ttl`` seconds (whole, at least 1), or
        ``never`` removes by age; the stream needs ``allow_msg_ttl``."""
        answer = await self._call(
            "PublishToStream",
            lambda: self._stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    stream_name=stream,
                    subject=subject,
                    data=data,
                    headers=dict(headers or {}),
                    ttl=_duration(ttl),
                    ttl_never=never,
                    **self._ids(),
                )
            ),
        )
        return PubAck(answer.sequence, answer.duplicate, answer.timestamp)

    async def kv_put_ttl(self, bucket: str, key: str, value: bytes, ttl: float) -> int:
        """Store ``value`` for ``ttl`` seconds (whole, at least 1); returns the revision."""
        answer = await self._call(
            "KVPut",
            lambda: self._stub.kv_put(
                pb.KvPutRequest(
                    bucket=bucket, key=key, value=value, ttl=_duration(ttl), **self._ids()
                )
            ),
        )
        return answer.revision

    async def kv_create_ttl(self, bucket: str, key: str, value: bytes, ttl: float) -> int:
        """Create-if-absent that expires after ``ttl`` seconds (a lease, a lock)."""
        answer = await self._call(
            "KVCreate",
            lambda: self._stub.kv_create(
                pb.KvCreateRequest(
                    bucket=bucket, key=key, value=value, ttl=_duration(ttl), **self._ids()
                )
            ),
        )
        return answer.revision

    async def kv_purge(self, bucket: str, key: str, *, ttl: float | None = None) -> None:
        """Drop the key's history; with ``ttl``, the purge marker itself goes after it."""
        await self._call(
            "KVDelete",
            lambda: self._stub.kv_delete(
                pb.KvDeleteRequest(
                    bucket=bucket, key=key, purge=True, ttl=_duration(ttl), **self._ids()
                )
            ),
        )

    # ---- dead letters ---------------------------------------------------------------------

    async def terminate(self, *messages: JsMsg, reason: str = "") -> int:
        """Never redeliver these messages; ``reason`` (one line, at most 256 bytes) travels to
        NATS's terminated advisory and to the consumer's dead-letter copy
        (``natsgw-dead-letter-reason``). Returns how many the gateway accepted."""
        tokens = [m.ack_token for m in messages]
        answer = await self._call(
            "AckMessages",
            lambda: self._stub.ack_messages(
                pb.AckMessagesRequest(
                    ack_tokens=tokens,
                    action=AckAction.TERMINATE,
                    term_reason=reason,
                    **self._ids(),
                )
            ),
        )
        return answer.succeeded


def _duration(seconds: float | None) -> datetime.timedelta | None:
    return None if seconds is None else datetime.timedelta(seconds=seconds)


async def connect(
    target: str = f"127.0.0.1:{DEFAULT_PORT}",
    *,
    token: str = "",
    user_id: str = "",
    organization_id: str = "",
    tls: ssl.SSLContext | bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    timeout: float | None = 30.0,
    metadata: Mapping[str, str] | None = None,
    retry: Retry = _retry.UNARY,
    stream_retry: Retry = _retry.STREAM,
) -> Client:
    """A :class:`Client` whose gateway has answered a health check (fails fast otherwise)."""
    client = Client(
        target,
        token=token,
        user_id=user_id,
        organization_id=organization_id,
        tls=tls,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        timeout=timeout,
        metadata=metadata,
        retry=retry,
        stream_retry=stream_retry,
    )
    try:  # fails fast: no retries when nothing answers
        await client._call(
            "HealthCheck",
            lambda: client.stub.health_check(pb.NatsHealthCheckRequest()),
            retry=_retry.NEVER,
        )
    except BaseException:
        client.close()
        raise
    return client


__all__ = ["Client", "connect", "parse_target", "tls_context"]
