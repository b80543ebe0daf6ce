"""JetStream streams, consumers and messages (issue: JetStream through the gateway).

Every name crosses natsgw.tenancy on the way in (``ns.stream``, ``ns.pattern``, ``ns.consumer``)
and on the way out (``ns.from_name``, ``ns.from_subject``); NATS names never reach a client.

Conventions of the wire messages (proto3 zero values):

- ``max_msgs``, ``max_bytes``, ``max_msg_size``, ``max_msgs_per_subject``, ``max_deliver``:
  0 (or -1) means unlimited, in requests and in responses.
- ``replicas`` 0 means 1; ``ack_wait`` unset means NATS's 30 s; ``max_age`` unset means forever.

Acknowledging: every delivery carries ``ack_token`` (see natsgw.acks), usable on any replica
sharing ``NATSGW_ACK_TOKEN_SECRET``. Old clients ack by (stream_name, consumer_name, sequence);
that works for deliveries this replica made within ``NATSGW_DELIVERY_MEMORY_TTL`` (and among the
last ``NATSGW_DELIVERY_MEMORY_SIZE``); anything else is FAILED_PRECONDITION, never a fake success.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from natsgw._generated.isa import nats as pb
from natsgw.acks import AckSubject, AckTokens, parse_ack_subject
from natsgw.adapter.core import backoff_delay, check_headers
from natsgw.adapter.jetstream import (
    JetStreamAdapter,
    PullPipe,
    batch_completed,
    exceeds_max_bytes,
    pull_refusal,
)
from natsgw.adapter.types import (
    ConsumerDetails,
    ConsumerSpec,
    JetStreamDelivery,
    StreamDetails,
    StreamSpec,
)
from natsgw.deliveries import DeliveryMemory, FlowWindow, WindowRegistry
from natsgw.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from natsgw.service.base import Handlers, current_stream
from natsgw.subjects import captured_by
from natsgw.subscriptions import Mailbox
from natsgw.tenancy import Namespace

log = structlog.get_logger("natsgw.service.jetstream")

MAX_PULL_BATCH = 10_000
DEFAULT_PULL_WAIT = 5.0
#: Time kept back from a call's deadline to send the pulled messages.
PULL_DEADLINE_MARGIN = 0.25
MAX_NAK_DELAY = 7 * 86400.0
DEFAULT_CONSUME_MESSAGES = 100
MAX_CONSUME_MESSAGES = 10_000
DEFAULT_CONSUME_BYTES = 8 * 1024 * 1024
DEFAULT_HEARTBEAT = 5.0
MIN_HEARTBEAT = 0.1
MAX_HEARTBEAT = 300.0
#: How long a pull request of a Consume stream lives at NATS before it is renewed.
CONSUME_PULL_EXPIRES = 30.0
#: How often a Consume stream whose window is full looks at the consumer's ack floor in NATS
#: (acks sent through another replica free its window that way).
CONSUME_RECONCILE_EVERY = 1.0
#: How long PublishToStream trusts a stream's subject list before reading it again.
STREAM_SUBJECTS_TTL = 2.0
#: JetStream's own default ack wait, for consumers created without one.
NATS_DEFAULT_ACK_WAIT = 30.0

#: Set by the gateway on every stream publish (it names the NATS stream): not shown to clients.
_HIDDEN_HEADERS = frozenset({"Nats-Expected-Stream"})

_STORAGE = {pb.StorageType.STORAGE_FILE: "file", pb.StorageType.STORAGE_MEMORY: "memory"}
_RETENTION = {
    pb.RetentionPolicy.RETENTION_LIMITS: "limits",
    pb.RetentionPolicy.RETENTION_INTEREST: "interest",
    pb.RetentionPolicy.RETENTION_WORK_QUEUE: "workqueue",
}
_DISCARD = {pb.DiscardPolicy.DISCARD_OLD: "old", pb.DiscardPolicy.DISCARD_NEW: "new"}
_DELIVER = {
    pb.DeliveryPolicy.DELIVERY_ALL: "all",
    pb.DeliveryPolicy.DELIVERY_LAST: "last",
    pb.DeliveryPolicy.DELIVERY_NEW: "new",
    pb.DeliveryPolicy.DELIVERY_BY_START_SEQUENCE: "by_start_sequence",
    pb.DeliveryPolicy.DELIVERY_BY_START_TIME: "by_start_time",
    pb.DeliveryPolicy.DELIVERY_LAST_PER_SUBJECT: "last_per_subject",
}
_ACK_POLICY = {
    pb.AckPolicy.ACK_EXPLICIT: "explicit",
    pb.AckPolicy.ACK_ALL: "all",
    pb.AckPolicy.ACK_NONE: "none",
}
_REPLAY = {pb.ReplayPolicy.REPLAY_INSTANT: "instant", pb.ReplayPolicy.REPLAY_ORIGINAL: "original"}
_ACK_PAYLOAD = {
    pb.AckAction.ACK: b"+ACK",
    pb.AckAction.NAK: b"-NAK",
    pb.AckAction.IN_PROGRESS: b"+WPI",
    pb.AckAction.TERMINATE: b"+TERM",
}


K = TypeVar("K")
V = TypeVar("V")


def _reverse(mapping: dict[K, V]) -> dict[V, K]:
    return {v: k for k, v in mapping.items()}


_STORAGE_OUT = _reverse(_STORAGE)
_RETENTION_OUT = _reverse(_RETENTION)
_DISCARD_OUT = _reverse(_DISCARD)
_DELIVER_OUT = _reverse(_DELIVER)
_ACK_POLICY_OUT = _reverse(_ACK_POLICY)
_REPLAY_OUT = _reverse(_REPLAY)


# -- wire <-> plain values ------------------------------------------------------------------------


def _seconds(
    value: datetime.timedelta | None, field: str, *, maximum: float | None = None
) -> float:
    if value is None:
        return 0.0
    seconds = value.total_seconds()
    if seconds < 0:
        raise InvalidArgument(field, f"must not be negative (got {seconds:g}s)")
    if maximum is not None and seconds > maximum:
        raise InvalidArgument(field, f"must be at most {maximum:g}s (got {seconds:g}s)")
    return seconds


def _limit(value: int, field: str) -> int:
    """0 and -1 mean unlimited (NATS's -1); anything else below is refused."""
    if value < -1:
        raise InvalidArgument(field, f"must be positive, or 0 for unlimited (got {value})")
    return -1 if value in (0, -1) else value


def _limit_out(value: int) -> int:
    return 0 if value < 0 else value


def _enum(mapping: dict[K, V], value: K, field: str) -> V:
    try:
        return mapping[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown value {int(value)}") from None  # type: ignore[call-overload]


def stream_spec(
    ns: Namespace, config: pb.StreamConfig, name: str, field: str = "config"
) -> StreamSpec:
    """The NATS stream a tenant's StreamConfig asks for (``name`` is already mapped)."""
    subjects = tuple(ns.pattern(s, f"{field}.subjects[{i}]") for i, s in enumerate(config.subjects))
    if not subjects:
        raise InvalidArgument(f"{field}.subjects", "at least one subject is required")
    max_per_subject = _limit(config.max_msgs_per_subject, f"{field}.max_msgs_per_subject")
    discard = _enum(_DISCARD, config.discard, f"{field}.discard")
    if config.discard_new_per_subject:
        if max_per_subject <= 0:
            raise InvalidArgument(
                f"{field}.discard_new_per_subject",
                "needs max_msgs_per_subject > 0 (the per-subject limit it enforces)",
            )
        discard = "new"
    if config.replicas < 0:
        raise InvalidArgument(f"{field}.replicas", f"must be 1 or more (got {config.replicas})")
    return StreamSpec(
        name=name,
        subjects=subjects,
        storage=_enum(_STORAGE, config.storage, f"{field}.storage"),
        retention=_enum(_RETENTION, config.retention, f"{field}.retention"),
        max_msgs=_limit(config.max_msgs, f"{field}.max_msgs"),
        max_bytes=_limit(config.max_bytes, f"{field}.max_bytes"),
        max_age=_seconds(config.max_age, f"{field}.max_age"),
        max_msg_size=_limit(config.max_msg_size, f"{field}.max_msg_size"),
        max_msgs_per_subject=max_per_subject,
        replicas=config.replicas or 1,
        discard=discard,
        discard_new_per_subject=config.discard_new_per_subject,
        duplicate_window=_seconds(config.duplicate_window, f"{field}.duplicate_window"),
    )


def _clamp32(value: int) -> int:
    return max(-(2**31), min(2**31 - 1, value))


def stream_info_out(ns: Namespace, details: StreamDetails) -> pb.StreamInfo:
    spec, state = details.spec, details.state
    name = ns.from_name(spec.name) or ""
    config = pb.StreamConfig(
        name=name,
        subjects=[s for s in (ns.from_subject(x) for x in spec.subjects) if s is not None],
        storage=_STORAGE_OUT.get(spec.storage, pb.StorageType.STORAGE_FILE),
        max_msgs=_clamp32(_limit_out(spec.max_msgs)),
        max_bytes=_limit_out(spec.max_bytes),
        max_age=datetime.timedelta(seconds=spec.max_age),
        max_msg_size=_clamp32(_limit_out(spec.max_msg_size)),
        replicas=spec.replicas,
        discard_new_per_subject=spec.discard_new_per_subject,
        max_msgs_per_subject=_limit_out(spec.max_msgs_per_subject),
        discard=_DISCARD_OUT.get(spec.discard, pb.DiscardPolicy.DISCARD_OLD),
        duplicate_window=datetime.timedelta(seconds=spec.duplicate_window),
        retention=_RETENTION_OUT.get(spec.retention, pb.RetentionPolicy.RETENTION_LIMITS),
    )
    return pb.StreamInfo(
        name=name,
        config=config,
        state=pb.StreamState(
            messages=state.messages,
            bytes=state.bytes,
            first_seq=state.first_seq,
            last_seq=state.last_seq,
            first_ts=state.first_ts,
            last_ts=state.last_ts,
            num_subjects=_clamp32(state.num_subjects),
            consumer_count=_clamp32(state.consumer_count),
        ),
        created=details.created,
    )


def consumer_spec(ns: Namespace, config: pb.ConsumerConfig, field: str = "config") -> ConsumerSpec:
    name = ns.consumer(config.name, f"{field}.name") if config.name else ""
    durable = (
        ns.consumer(config.durable_name, f"{field}.durable_name") if config.durable_name else ""
    )
    if name and durable and name != durable:
        raise InvalidArgument(
            f"{field}.name",
            f"{name!r} differs from durable_name {durable!r}; set one, or both equal",
        )
    policy = _enum(_DELIVER, config.delivery_policy, f"{field}.delivery_policy")
    if policy == "by_start_sequence" and config.opt_start_seq <= 0:
        raise InvalidArgument(f"{field}.opt_start_seq", "DELIVERY_BY_START_SEQUENCE needs it > 0")
    if policy == "by_start_time" and config.opt_start_time is None:
        raise InvalidArgument(f"{field}.opt_start_time", "DELIVERY_BY_START_TIME needs it set")
    if config.opt_start_seq < 0:
        raise InvalidArgument(f"{field}.opt_start_seq", "must not be negative")
    if config.max_ack_pending < -1:
        raise InvalidArgument(f"{field}.max_ack_pending", "must be positive, or 0 for the default")
    return ConsumerSpec(
        name=name,
        durable_name=durable,
        filter_subject=(
            ns.pattern(config.filter_subject, f"{field}.filter_subject")
            if config.filter_subject
            else ""
        ),
        deliver_policy=policy,
        ack_policy=_enum(_ACK_POLICY, config.ack_policy, f"{field}.ack_policy"),
        ack_wait=_seconds(config.ack_wait, f"{field}.ack_wait"),
        max_deliver=_limit(config.max_deliver, f"{field}.max_deliver"),
        replay_policy=_enum(_REPLAY, config.replay_policy, f"{field}.replay_policy"),
        opt_start_seq=config.opt_start_seq if policy == "by_start_sequence" else 0,
        opt_start_time=config.opt_start_time if policy == "by_start_time" else None,
        max_ack_pending=config.max_ack_pending,
        inactive_threshold=_seconds(config.inactive_threshold, f"{field}.inactive_threshold"),
    )


def consumer_info_out(ns: Namespace, details: ConsumerDetails) -> pb.ConsumerInfo:
    spec, state = details.spec, details.state
    config = pb.ConsumerConfig(
        name=spec.name,
        durable_name=spec.durable_name,
        filter_subject=(ns.from_subject(spec.filter_subject) or "") if spec.filter_subject else "",
        delivery_policy=_DELIVER_OUT.get(spec.deliver_policy, pb.DeliveryPolicy.DELIVERY_ALL),
        ack_policy=_ACK_POLICY_OUT.get(spec.ack_policy, pb.AckPolicy.ACK_EXPLICIT),
        ack_wait=datetime.timedelta(seconds=spec.ack_wait),
        max_deliver=_clamp32(_limit_out(spec.max_deliver)),
        replay_policy=_REPLAY_OUT.get(spec.replay_policy, pb.ReplayPolicy.REPLAY_INSTANT),
        opt_start_seq=spec.opt_start_seq,
        opt_start_time=spec.opt_start_time,
        max_ack_pending=_clamp32(_limit_out(spec.max_ack_pending)),
        inactive_threshold=(
            datetime.timedelta(seconds=spec.inactive_threshold) if spec.inactive_threshold else None
        ),
    )
    return pb.ConsumerInfo(
        stream_name=ns.from_name(details.stream) or "",
        name=details.name,
        config=config,
        state=pb.ConsumerState(
            delivered_seq=state.delivered_stream_seq,
            ack_floor_seq=state.ack_floor_stream_seq,
            num_pending=state.num_pending,
            num_redelivered=state.num_redelivered,
        ),
        created=details.created,
    )


def _error_code(exc: GatewayError) -> int:
    return int(exc.status.value)


@functools.lru_cache(maxsize=8)
def _nats_prefix_re(root: str) -> re.Pattern[str]:
    # root, separator, tenant key (kind letter + escaped id: never '.' or '-'), separator
    return re.compile(rf"{re.escape(root)}[.-][uo][A-Za-z0-9_]*[.-]")


def tenant_view(exc: GatewayError, root: str) -> GatewayError:
    """Rewrite NATS names in an error message the way the tenant names them."""
    exc.message = _nats_prefix_re(root).sub("", exc.message)
    exc.args = (exc.message,)
    return exc


_H = TypeVar("_H", bound=Handlers)
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def tenant_errors(
    func: Callable[[_H, _Req], Awaitable[_Resp]],
) -> Callable[[_H, _Req], Coroutine[Any, Any, _Resp]]:
    """Errors leaving a handler name streams and subjects as the tenant does, not as NATS."""

    @functools.wraps(func)
    async def handler(self: _H, message: _Req) -> _Resp:
        try:
            return await func(self, message)
        except GatewayError as exc:
            raise tenant_view(exc, self.settings.namespace_root) from exc.__cause__

    return handler


@dataclass(slots=True)
class _SubjectCache:
    subjects: tuple[str, ...]
    read_at: float


class JetStreamParts:
    """State the JetStream handlers share across calls (one per gateway)."""

    def __init__(self, handlers: Handlers) -> None:
        settings = handlers.settings
        self.js = JetStreamAdapter(handlers.adapter, settings.request_timeout)
        self.tokens = AckTokens(settings.ack_token_secret)
        self.memory = DeliveryMemory(settings.delivery_memory_size, settings.delivery_memory_ttl)
        self.windows = WindowRegistry()
        self.subjects: dict[str, _SubjectCache] = {}


class JetStreamHandlers(Handlers):
    @functools.cached_property
    def jetstream_parts(self) -> JetStreamParts:
        return JetStreamParts(self)

    # -- streams ---------------------------------------------------------------------------------

    @tenant_errors
    async def create_stream(self, message: pb.CreateStreamRequest) -> pb.CreateStreamResponse:
        ns = await self.namespace(message)
        config = message.config or pb.StreamConfig()
        name = ns.stream(config.name, "config.name")
        details = await self.jetstream_parts.js.add_stream(stream_spec(ns, config, name))
        self.jetstream_parts.subjects.pop(name, None)
        return pb.CreateStreamResponse(
            success=True, stream=stream_info_out(ns, details), message="stream ready"
        )

    @tenant_errors
    async def delete_stream(self, message: pb.DeleteStreamRequest) -> pb.DeleteStreamResponse:
        ns = await self.namespace(message)
        name = ns.stream(message.stream_name)
        await self.jetstream_parts.js.delete_stream(name)
        self.jetstream_parts.subjects.pop(name, None)
        return pb.DeleteStreamResponse(success=True)

    @tenant_errors
    async def get_stream_info(self, message: pb.GetStreamInfoRequest) -> pb.GetStreamInfoResponse:
        ns = await self.namespace(message)
        details = await self.jetstream_parts.js.stream_info(ns.stream(message.stream_name))
        return pb.GetStreamInfoResponse(stream=stream_info_out(ns, details))

    @tenant_errors
    async def list_streams(self, message: pb.ListStreamsRequest) -> pb.ListStreamsResponse:
        ns = await self.namespace(message)
        streams = await self.own_streams(ns)
        return pb.ListStreamsResponse(streams=[stream_info_out(ns, d) for d in streams])

    async def own_streams(self, ns: Namespace) -> list[StreamDetails]:
        """The tenant's streams, sorted by name; never KV/Object streams or another tenant's."""
        found = await self.jetstream_parts.js.list_streams(ns.subject_prefix + ">")
        own = [d for d in found if ns.from_name(d.spec.name) is not None]
        return sorted(own, key=lambda d: d.spec.name)

    @tenant_errors
    async def update_stream(self, message: pb.UpdateStreamRequest) -> pb.UpdateStreamResponse:
        ns = await self.namespace(message)
        name = ns.stream(message.stream_name)
        config = message.config or pb.StreamConfig()
        if config.name and config.name != message.stream_name:
            raise InvalidArgument(
                "config.name",
                f"{config.name!r} differs from stream_name {message.stream_name!r}; "
                "streams cannot be renamed",
            )
        js = self.jetstream_parts.js
        if not config.subjects:  # keep the stream's subjects (proto3 cannot say "unchanged")
            current = await js.stream_info(name)
            subjects = [s for s in map(ns.from_subject, current.spec.subjects) if s is not None]
            config = dataclasses.replace(config, subjects=subjects)
        details = await js.update_stream(stream_spec(ns, config, name))
        self.jetstream_parts.subjects.pop(name, None)
        return pb.UpdateStreamResponse(success=True, stream=stream_info_out(ns, details))

    @tenant_errors
    async def purge_stream(self, message: pb.PurgeStreamRequest) -> pb.PurgeStreamResponse:
        ns = await self.namespace(message)
        name = ns.stream(message.stream_name)
        subject = ns.pattern(message.subject) if message.subject else ""
        purged = await self.jetstream_parts.js.purge_stream(name, subject)
        return pb.PurgeStreamResponse(success=True, purged_count=purged)

    # -- consumers -------------------------------------------------------------------------------

    @tenant_errors
    async def create_consumer(self, message: pb.CreateConsumerRequest) -> pb.CreateConsumerResponse:
        ns = await self.namespace(message)
        stream = ns.stream(message.stream_name)
        spec = consumer_spec(ns, message.config or pb.ConsumerConfig())
        details = await self.jetstream_parts.js.add_consumer(stream, spec)
        return pb.CreateConsumerResponse(
            success=True, consumer=consumer_info_out(ns, details), message="consumer ready"
        )

    @tenant_errors
    async def delete_consumer(self, message: pb.DeleteConsumerRequest) -> pb.DeleteConsumerResponse:
        ns = await self.namespace(message)
        await self.jetstream_parts.js.delete_consumer(
            ns.stream(message.stream_name), ns.consumer(message.consumer_name)
        )
        return pb.DeleteConsumerResponse(success=True)

    @tenant_errors
    async def get_consumer_info(
        self, message: pb.GetConsumerInfoRequest
    ) -> pb.GetConsumerInfoResponse:
        ns = await self.namespace(message)
        details = await self.jetstream_parts.js.consumer_info(
            ns.stream(message.stream_name), ns.consumer(message.consumer_name)
        )
        return pb.GetConsumerInfoResponse(consumer=consumer_info_out(ns, details))

    @tenant_errors
    async def list_consumers(self, message: pb.ListConsumersRequest) -> pb.ListConsumersResponse:
        ns = await self.namespace(message)
        consumers = await self.jetstream_parts.js.list_consumers(ns.stream(message.stream_name))
        return pb.ListConsumersResponse(
            consumers=[consumer_info_out(ns, d) for d in sorted(consumers, key=lambda d: d.name)]
        )

    # -- publishing ------------------------------------------------------------------------------

    async def _target_stream(self, ns: Namespace, stream_name: str, subject: str) -> str:
        """The NATS stream to publish ``subject`` (NATS name) into.

        Named: it must capture the subject. Unnamed (old clients that never sent one): the
        tenant's stream that captures it.
        """
        js = self.jetstream_parts.js
        if not stream_name:
            for details in await js.list_streams(subject):
                if ns.from_name(details.spec.name) is not None:
                    return details.spec.name
            raise InvalidArgument(
                "subject", f"{ns.from_subject(subject)!r} is not captured by any of your streams"
            )
        return ns.stream(stream_name)

    async def _stream_subjects(self, name: str) -> tuple[str, ...]:
        cache = self.jetstream_parts.subjects
        now = time.monotonic()
        entry = cache.get(name)
        if entry is None or now - entry.read_at > STREAM_SUBJECTS_TTL:
            details = await self.jetstream_parts.js.stream_info(name)
            entry = _SubjectCache(details.spec.subjects, now)
            if len(cache) > 10_000:
                cache.clear()
            cache[name] = entry
        return entry.subjects

    async def _check_captured(
        self, ns: Namespace, stream: str, subject: str, field: str = "subject"
    ) -> None:
        subjects = await self._stream_subjects(stream)
        if not captured_by(subject, subjects):
            mine = ", ".join(s for s in (ns.from_subject(x) for x in subjects) if s)
            raise InvalidArgument(
                field,
                f"{ns.from_subject(subject)!r} is not captured by stream "
                f"{ns.from_name(stream)!r} (its subjects: {mine})",
            )

    @tenant_errors
    async def publish_to_stream(
        self, message: pb.PublishToStreamRequest
    ) -> pb.PublishToStreamResponse:
        ns = await self.namespace(message)
        subject = ns.subject(message.subject)
        stream = await self._target_stream(ns, message.stream_name, subject)
        await self._check_captured(ns, stream, subject)
        js = self.jetstream_parts.js
        ack = await js.publish(subject, message.data, stream=stream, headers=message.headers)
        stored = await js.stored_time(stream, ack.sequence)
        return pb.PublishToStreamResponse(
            success=True,
            sequence=ack.sequence,
            timestamp=stored or datetime.datetime.now(datetime.UTC),
            message="duplicate of an earlier Nats-Msg-Id; not stored again"
            if ack.duplicate
            else "stored",
            duplicate=ack.duplicate,
        )

    @tenant_errors
    async def publish_to_stream_batch(
        self, message: pb.PublishToStreamBatchRequest
    ) -> pb.PublishToStreamBatchResponse:
        ns = await self.namespace(message)
        if not message.messages:
            return pb.PublishToStreamBatchResponse(published_count=0, results=[])
        if message.stream_name:
            stream = ns.stream(message.stream_name)
        else:
            first = ns.subject(message.messages[0].subject, "messages[0].subject")
            stream = await self._target_stream(ns, "", first)
        subjects = await self._stream_subjects(stream)
        root = self.settings.namespace_root
        results: list[pb.StreamPublishResult | None] = [None] * len(message.messages)
        batch: list[tuple[str, bytes, dict[str, str]]] = []
        positions: list[int] = []

        def refused(index: int, exc: GatewayError) -> pb.StreamPublishResult:
            field = f"messages[{index}]"
            text = tenant_view(exc, root).message
            text = text if text.startswith(field) else f"{field}: {text}"
            return pb.StreamPublishResult(success=False, error=text, status_code=_error_code(exc))

        for index, item in enumerate(message.messages):
            field = f"messages[{index}]"
            try:
                subject = ns.subject(item.subject, f"{field}.subject")
                if not captured_by(subject, subjects):
                    raise InvalidArgument(
                        f"{field}.subject",
                        f"{item.subject!r} is not captured by stream {ns.from_name(stream)!r}",
                    )
                check_headers(item.headers, f"{field}.headers")
            except GatewayError as exc:
                results[index] = refused(index, exc)
                continue
            headers = dict(item.headers)
            if item.msg_id:
                headers["Nats-Msg-Id"] = item.msg_id
            batch.append((subject, item.data, headers))
            positions.append(index)
        outcomes = await self.jetstream_parts.js.publish_many(
            batch, stream=stream, inflight=self.settings.stream_publish_inflight
        )
        for index, outcome in zip(positions, outcomes, strict=True):
            results[index] = (
                refused(index, outcome)
                if isinstance(outcome, GatewayError)
                else pb.StreamPublishResult(
                    success=True, sequence=outcome.sequence, duplicate=outcome.duplicate
                )
            )
        done = [r for r in results if r is not None]
        return pb.PublishToStreamBatchResponse(
            published_count=sum(1 for r in done if r.success), results=done
        )

    # -- pulling ---------------------------------------------------------------------------------

    def _deliver(self, ns: Namespace, delivery: JetStreamDelivery) -> pb.JetStreamMessage:
        """Remember a delivery for ack-by-sequence and present it in the tenant's view."""
        parts = self.jetstream_parts
        parts.memory.remember(
            (ns.key, delivery.stream, delivery.consumer, delivery.stream_seq), delivery.reply
        )
        return pb.JetStreamMessage(
            subject=ns.from_subject(delivery.subject) or "",
            data=delivery.data,
            headers={k: v for k, v in delivery.headers.items() if k not in _HIDDEN_HEADERS},
            sequence=delivery.stream_seq,
            timestamp=delivery.timestamp,
            num_delivered=_clamp32(delivery.num_delivered),
            ack_token=parts.tokens.issue(ns.key, delivery.reply),
            consumer_sequence=delivery.consumer_seq,
            num_pending=delivery.num_pending,
        )

    @tenant_errors
    async def pull_messages(self, message: pb.PullMessagesRequest) -> pb.PullMessagesResponse:
        ns = await self.namespace(message)
        stream = ns.stream(message.stream_name)
        consumer = ns.consumer(message.consumer_name)
        batch = message.batch_size or 1
        if not 1 <= batch <= MAX_PULL_BATCH:
            raise InvalidArgument("batch_size", f"must be 1 to {MAX_PULL_BATCH} (got {batch})")
        wait = self.timeout(message.max_wait, DEFAULT_PULL_WAIT, "max_wait")
        call = current_stream.get()
        if call is not None and call.deadline is not None:
            # Answer (possibly with nothing) before the client's deadline, not after it.
            wait = min(wait, max(call.deadline.time_remaining() - PULL_DEADLINE_MARGIN, 0.0))
        # Keep the response well inside the gateway's message size limit (a single larger
        # message still goes alone).
        budget = self.settings.max_message_size // 2
        deliveries = await self.jetstream_parts.js.fetch(stream, consumer, batch, wait, budget)
        return pb.PullMessagesResponse(messages=[self._deliver(ns, d) for d in deliveries])

    # -- acknowledging ---------------------------------------------------------------------------

    def _resolve(
        self,
        ns: Namespace,
        token: str,
        stream_name: str,
        consumer_name: str,
        sequence: int,
        field: str = "ack_token",
    ) -> AckSubject:
        parts = self.jetstream_parts
        if token:
            ack = parts.tokens.verify(token, ns.key, field)
            if ns.from_name(ack.stream) is None:
                raise PermissionDenied(f"{field}: names a stream outside your namespace")
            if stream_name and ns.stream(stream_name) != ack.stream:
                raise InvalidArgument("stream_name", "does not match the ack token's stream")
            if consumer_name and consumer_name != ack.consumer:
                raise InvalidArgument("consumer_name", "does not match the ack token's consumer")
            if sequence and sequence != ack.stream_seq:
                raise InvalidArgument("sequence", "does not match the ack token's sequence")
            return ack
        stream = ns.stream(stream_name)
        consumer = ns.consumer(consumer_name)
        if sequence <= 0:
            raise InvalidArgument("sequence", f"must be a stream sequence (> 0), got {sequence}")
        reply = parts.memory.lookup((ns.key, stream, consumer, sequence))
        if reply is None:
            raise FailedPrecondition(
                f"this gateway does not know a delivery of sequence {sequence} to consumer "
                f"{consumer_name!r} on stream {stream_name!r}: it was not pulled through this "
                "gateway replica, the gateway restarted since, or it was delivered longer ago "
                "than NATSGW_DELIVERY_MEMORY_TTL. Nothing was acknowledged. Use the message's "
                "ack_token, which any replica accepts."
            )
        return _ack_subject(reply)

    async def _act(self, ack: AckSubject, action: pb.AckAction, delay: float = 0.0) -> None:
        await self.jetstream_parts.js.ack(ack.subject, _ack_payload(action, delay))
        self._settled(ack, action)

    def _settled(self, ack: AckSubject, action: pb.AckAction) -> None:
        """Tell this replica's Consume windows that a delivery was acted on."""
        self.jetstream_parts.windows.settle(
            ack.stream,
            ack.consumer,
            ack.stream_seq,
            in_progress=action == pb.AckAction.IN_PROGRESS,
            cumulative=action == pb.AckAction.ACK,
        )

    @tenant_errors
    async def ack_message(self, message: pb.AckMessageRequest) -> pb.AckMessageResponse:
        ns = await self.namespace(message)
        ack = self._resolve(
            ns, message.ack_token, message.stream_name, message.consumer_name, message.sequence
        )
        await self._act(ack, message.action)
        return pb.AckMessageResponse(success=True)

    @tenant_errors
    async def nak_message(self, message: pb.NakMessageRequest) -> pb.NakMessageResponse:
        ns = await self.namespace(message)
        delay = _seconds(message.delay, "delay", maximum=MAX_NAK_DELAY)
        ack = self._resolve(
            ns, message.ack_token, message.stream_name, message.consumer_name, message.sequence
        )
        await self._act(ack, pb.AckAction.NAK, delay)
        return pb.NakMessageResponse(success=True)

    @tenant_errors
    async def ack_messages(self, message: pb.AckMessagesRequest) -> pb.AckMessagesResponse:
        ns = await self.namespace(message)
        _enum(_ACK_PAYLOAD, message.action, "action")
        delay = _seconds(message.nak_delay, "nak_delay", maximum=MAX_NAK_DELAY)
        payload = _ack_payload(message.action, delay)
        root = self.settings.namespace_root
        results: list[pb.AckResult | None] = [None] * len(message.ack_tokens)
        resolved: list[AckSubject] = []
        positions: list[int] = []

        def refused(exc: GatewayError) -> pb.AckResult:
            text = tenant_view(exc, root).message
            return pb.AckResult(success=False, error=text, status_code=_error_code(exc))

        for index, token in enumerate(message.ack_tokens):
            try:
                if not token:
                    raise InvalidArgument(f"ack_tokens[{index}]", "must not be empty")
                resolved.append(self._resolve(ns, token, "", "", 0, f"ack_tokens[{index}]"))
                positions.append(index)
            except GatewayError as exc:
                results[index] = refused(exc)
        outcomes = await self.jetstream_parts.js.ack_many(
            [(ack.subject, payload) for ack in resolved],
            inflight=self.settings.stream_publish_inflight,
        )
        for index, ack, outcome in zip(positions, resolved, outcomes, strict=True):
            if outcome is None:
                self._settled(ack, message.action)
                results[index] = pb.AckResult(success=True)
            else:
                results[index] = refused(outcome)
        done = [r for r in results if r is not None]
        return pb.AckMessagesResponse(succeeded=sum(1 for r in done if r.success), results=done)

    # -- continuous consumption ------------------------------------------------------------------

    async def consume(self, message: pb.ConsumeRequest) -> AsyncIterator[pb.ConsumeResponse]:
        try:
            async for response in self._consume(message):
                yield response
        except GatewayError as exc:
            raise tenant_view(exc, self.settings.namespace_root) from exc.__cause__

    async def _consume(self, message: pb.ConsumeRequest) -> AsyncIterator[pb.ConsumeResponse]:
        ns = await self.namespace(message)
        stream = ns.stream(message.stream_name)
        consumer = ns.consumer(message.consumer_name)
        max_msgs = message.max_messages or DEFAULT_CONSUME_MESSAGES
        if not 1 <= max_msgs <= MAX_CONSUME_MESSAGES:
            raise InvalidArgument(
                "max_messages", f"must be 1 to {MAX_CONSUME_MESSAGES} (got {max_msgs})"
            )
        max_bytes = message.max_bytes or DEFAULT_CONSUME_BYTES
        if max_bytes < 1:
            raise InvalidArgument("max_bytes", f"must be positive (got {max_bytes})")
        heartbeat = _seconds(message.heartbeat, "heartbeat", maximum=MAX_HEARTBEAT)
        heartbeat = heartbeat or DEFAULT_HEARTBEAT
        if heartbeat < MIN_HEARTBEAT:
            raise InvalidArgument("heartbeat", f"must be at least {MIN_HEARTBEAT:g}s")
        parts = self.jetstream_parts
        info = await parts.js.consumer_info(stream, consumer)
        window = FlowWindow(
            max_msgs,
            max_bytes,
            info.spec.ack_wait or NATS_DEFAULT_ACK_WAIT,
            track=info.spec.ack_policy != "none",
            ack_all=info.spec.ack_policy == "all",
        )
        pipe = await parts.js.open_pull(stream, consumer, max_msgs)
        session = _ConsumeSession(self, ns, stream, consumer, pipe, window, heartbeat)
        # Registered with the gateway's streams so that shutdown ends it cleanly (status OK),
        # like Subscribe. The key holds spaces: no tenant subject can name it in Unsubscribe.
        shutdown = Mailbox(1, 1, self.settings.slow_consumer_policy)
        registry_key = f"consume {stream} {consumer}"
        self.deps.subscriptions.add(ns.key, registry_key, shutdown)
        watcher = asyncio.create_task(_stop_on_end(shutdown, session), name="natsgw-consume-end")
        parts.windows.add(stream, consumer, window)
        try:
            await self.announce_ready()
            async for response in session.run():
                yield response
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            self.deps.subscriptions.remove(ns.key, registry_key, shutdown)
            parts.windows.remove(stream, consumer, window)
            await pipe.close()


async def _stop_on_end(mailbox: Mailbox, session: _ConsumeSession) -> None:
    await mailbox.get()  # returns None once the gateway ends its streams
    session.stop()


def _ack_payload(action: pb.AckAction, delay: float) -> bytes:
    payload = _enum(_ACK_PAYLOAD, action, "action")
    if action == pb.AckAction.NAK and delay > 0:
        payload += b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
    return payload


def _ack_subject(reply: str) -> AckSubject:
    parsed = parse_ack_subject(reply)
    if parsed is None:  # only parsed ack subjects are ever remembered
        raise FailedPrecondition("the remembered delivery has no ack subject")
    return parsed


class _ConsumeSession:
    """One Consume stream: keeps one pull request open while the window has room."""

    def __init__(
        self,
        handlers: JetStreamHandlers,
        ns: Namespace,
        stream: str,
        consumer: str,
        pipe: PullPipe,
        window: FlowWindow,
        heartbeat: float,
    ) -> None:
        self.h = handlers
        self.ns = ns
        self.stream = stream
        self.consumer = consumer
        self.pipe = pipe
        self.window = window
        self.heartbeat = heartbeat
        # NATS idle heartbeats on the pull: a silent pull is a lost one (e.g. server restart).
        self.nats_heartbeat = min(max(heartbeat, 0.5), 10.0)
        self.open = False
        self.remaining = 0
        self.oversize = False
        self.failures = 0
        self.stopped = False

    def stop(self) -> None:
        """End the stream (normally) at the next step; wakes whatever it waits for."""
        self.stopped = True
        self.pipe.interrupt()
        self.window.wake()

    def _status(self, **kwargs: object) -> pb.ConsumeResponse:
        return pb.ConsumeResponse(
            outstanding_messages=self.window.messages,
            outstanding_bytes=self.window.bytes,
            **kwargs,  # type: ignore[arg-type]
        )

    async def run(self) -> AsyncIterator[pb.ConsumeResponse]:
        clock = time.monotonic
        last_sent = clock()
        last_heard = clock()
        retry_at = 0.0
        reconcile_at = clock() + CONSUME_RECONCILE_EVERY
        while not self.stopped:
            now = clock()
            if now - last_sent >= self.heartbeat:
                yield self._status(heartbeat=True)
                last_sent = clock()
                continue
            next_deadline = self.window.expire()
            wake = last_sent + self.heartbeat
            if next_deadline is not None:
                wake = min(wake, next_deadline)
            if not self.open:
                msgs, room_bytes = self.window.room()
                can_pull = (msgs > 0 and room_bytes > 0) and now >= retry_at
                if can_pull:
                    try:
                        await self._request(msgs, room_bytes)
                        last_heard = clock()
                        self.failures = 0
                    except Unavailable as exc:
                        self.failures += 1
                        retry_at = clock() + backoff_delay(self.failures)
                        log.info("consume_pull_retry", error=exc.message, stream=self.stream)
                    continue
                if now < retry_at:
                    wake = min(wake, retry_at)
                elif now >= reconcile_at:
                    # Full window: acks sent through other replicas only show in NATS's ack floor.
                    await self._reconcile()
                    reconcile_at = clock() + CONSUME_RECONCILE_EVERY
                    continue
                else:
                    wake = min(wake, reconcile_at)
                await self.window.wait_changed(wake - clock())
                continue
            stale_at = last_heard + 2 * self.nats_heartbeat + 1.0
            item = await self.pipe.next(min(wake, stale_at) - clock())
            if item is None:
                if clock() >= stale_at:
                    log.info("consume_pull_lost", stream=self.stream, consumer=self.consumer)
                    self.open = False
                continue
            last_heard = clock()
            if isinstance(item, JetStreamDelivery):
                self.remaining -= 1
                if self.remaining <= 0:
                    self.open = False
                self.window.add(item.stream_seq, item.nats_size)
                yield self._status(message=self.h._deliver(self.ns, item))
                last_sent = clock()
                continue
            if item.code == 100:
                continue
            self.open = False
            if item.code in (404, 408) or batch_completed(item):
                continue
            if item.code == 409:
                text = item.description.lower()
                if exceeds_max_bytes(item):
                    # The next message does not fit the byte window: wait for room; a message
                    # larger than the whole window goes alone once nothing is outstanding.
                    self.oversize = self.window.messages == 0
                    continue
                if "deleted" in text:
                    raise pull_refusal(item)
                if "leadership" in text or "server shutdown" in text:
                    continue
                raise pull_refusal(item)
            if item.code == 503:
                # No responder: JetStream not ready yet after a restart, or the consumer is gone
                # (then the stream ends NOT_FOUND).
                with contextlib.suppress(Unavailable, DeadlineExceeded):
                    await self.h.jetstream_parts.js.consumer_info(self.stream, self.consumer)
                self.failures += 1
                retry_at = clock() + backoff_delay(self.failures)
                continue
            raise pull_refusal(item)

    async def _reconcile(self) -> None:
        """Free deliveries at or below the consumer's ack floor (acked anywhere)."""
        try:
            info = await self.h.jetstream_parts.js.consumer_info(self.stream, self.consumer)
        except (Unavailable, DeadlineExceeded):
            return  # NATS is away: the window stays as it is
        self.window.settle_through(info.state.ack_floor_stream_seq)

    async def _request(self, msgs: int, room_bytes: int) -> None:
        if self.oversize and self.window.messages == 0:
            batch, max_bytes = 1, 0
        else:
            batch, max_bytes = msgs, room_bytes
        self.oversize = False
        await self.pipe.request(
            batch,
            expires=CONSUME_PULL_EXPIRES,
            max_bytes=max_bytes,
            heartbeat=self.nats_heartbeat,
        )
        self.open = True
        self.remaining = batch
