"""JetStream streams, consumers and messages (issue: JetStream through the gateway).

Every name crosses natsgw.tenancy on the way in (``ns.stream``, ``ns.pattern``, ``ns.consumer``)
and on the way out (``ns.from_name``, ``ns.from_subject``); NATS names never reach a client.

Conventions of the wire messages (proto3 zero values):

- ``max_msgs``, ``max_bytes``, ``max_msg_size``, ``max_msgs_per_subject``, ``max_deliver``:
  0 (or -1) means unlimited, in requests and in responses.
- ``replicas`` 0 means 1; ``ack_wait`` unset means NATS's 30 s; ``max_age`` unset means forever.

Acknowledging: every delivery carries ``ack_token`` (see natsgw.tenancy.acks), usable on any replica
sharing ``NATSGW_ACK_TOKEN_SECRET``. Old clients ack by (stream_name, consumer_name, sequence);
that works for deliveries this replica made within ``NATSGW_DELIVERY_MEMORY_TTL`` (and among the
last ``NATSGW_DELIVERY_MEMORY_SIZE``); anything else is FAILED_PRECONDITION, never a fake success.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass

import structlog

from natsgw._generated.isa import nats as pb
from natsgw.adapter.consumer_control import ConsumerControl
from natsgw.adapter.core import check_headers
from natsgw.adapter.dead_letters import TERMINATED, Advisory, AdvisoryLog
from natsgw.adapter.jetstream import JetStreamAdapter, TTLDisabled, ack_payload
from natsgw.adapter.types import JetStreamDelivery, StreamDetails
from natsgw.config import Settings
from natsgw.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    excerpt,
)
from natsgw.pipeline.call import Call
from natsgw.pipeline.streaming import Frames
from natsgw.service.consume import Burst, ConsumeEncoder, ConsumeSession, stop_on_end
from natsgw.service.dead_letters import CopyFailed, DeadLetterCopier, copy_subject
from natsgw.service.deliveries import DeliveryMemory, FlowWindow, WindowRegistry
from natsgw.service.jetstream_wire import (
    ACK_ACTIONS,
    HIDDEN_HEADERS,
    clamp32,
    consumer_info_out,
    consumer_spec,
    keep_ttl,
    pause_out,
    seconds_field,
    status_code_of,
    stream_info_out,
    stream_spec,
    tenant_view,
    wire_enum,
    with_ttl,
)
from natsgw.service.pacing import YIELD_EVERY, max_batch
from natsgw.service.subscriptions import Mailbox, SubscriptionRegistry
from natsgw.tenancy import Namespace, internal_metadata
from natsgw.tenancy.acks import AckSubject, AckTokens, parse_ack_subject
from natsgw.tenancy.subjects import captured_by
from natsgw.wire.items import StreamItem

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
#: How long PublishToStream trusts a stream's subject list before reading it again.
STREAM_SUBJECTS_TTL = 2.0
#: JetStream's own default ack wait, for consumers created without one.
NATS_DEFAULT_ACK_WAIT = 30.0


@dataclass(slots=True)
class _SubjectCache:
    subjects: tuple[str, ...]
    read_at: float


async def own_streams(js: JetStreamAdapter, ns: Namespace) -> list[StreamDetails]:
    """The tenant's streams, sorted by name; never KV/Object streams or another tenant's."""
    found = await js.list_streams(ns.subject_prefix + ">")
    own = [d for d in found if ns.from_name(d.spec.name) is not None]
    return sorted(own, key=lambda d: d.spec.name)


class JetStreamService:
    """JetStream streams, consumers, publishing, pulling, acking and Consume streams."""

    def __init__(
        self, settings: Settings, js: JetStreamAdapter, subscriptions: SubscriptionRegistry
    ) -> None:
        self.settings = settings
        self.js = js
        self.subscriptions = subscriptions
        self.tokens = AckTokens(settings.ack_token_secret)
        self.memory = DeliveryMemory(settings.delivery_memory_size, settings.delivery_memory_ttl)
        self.windows = WindowRegistry()
        self.subjects: dict[str, _SubjectCache] = {}
        self.control = ConsumerControl(js)
        self.advisories = AdvisoryLog(js, settings.namespace_root)
        self.dead_letters = DeadLetterCopier(js, settings.namespace_root)

    # -- streams ---------------------------------------------------------------------------------

    async def create_stream(
        self, call: Call, message: pb.CreateStreamRequest
    ) -> pb.CreateStreamResponse:
        ns = call.ns
        config = message.config or pb.StreamConfig()
        name = ns.stream(config.name, "config.name")
        details = await self.js.add_stream(stream_spec(ns, config, name))
        self.subjects.pop(name, None)
        return pb.CreateStreamResponse(
            success=True, stream=stream_info_out(ns, details), message="stream ready"
        )

    async def delete_stream(
        self, call: Call, message: pb.DeleteStreamRequest
    ) -> pb.DeleteStreamResponse:
        ns = call.ns
        name = ns.stream(message.stream_name)
        await self.js.delete_stream(name)
        self.subjects.pop(name, None)
        return pb.DeleteStreamResponse(success=True)

    async def get_stream_info(
        self, call: Call, message: pb.GetStreamInfoRequest
    ) -> pb.GetStreamInfoResponse:
        ns = call.ns
        details = await self.js.stream_info(ns.stream(message.stream_name))
        return pb.GetStreamInfoResponse(stream=stream_info_out(ns, details))

    async def list_streams(
        self, call: Call, message: pb.ListStreamsRequest
    ) -> pb.ListStreamsResponse:
        ns = call.ns
        streams = await own_streams(self.js, ns)
        return pb.ListStreamsResponse(streams=[stream_info_out(ns, d) for d in streams])

    async def update_stream(
        self, call: Call, message: pb.UpdateStreamRequest
    ) -> pb.UpdateStreamResponse:
        ns = call.ns
        name = ns.stream(message.stream_name)
        config = message.config or pb.StreamConfig()
        if config.name and config.name != message.stream_name:
            raise InvalidArgument(
                "config.name",
                f"{config.name!r} differs from stream_name {message.stream_name!r}; "
                "streams cannot be renamed",
            )
        js = self.js
        current = await js.stream_info(name)
        config = keep_ttl(config, current.spec)
        if not config.subjects:  # keep the stream's subjects (proto3 cannot say "unchanged")
            subjects = [s for s in map(ns.from_subject, current.spec.subjects) if s is not None]
            config = dataclasses.replace(config, subjects=subjects)
        details = await js.update_stream(stream_spec(ns, config, name))
        self.subjects.pop(name, None)
        return pb.UpdateStreamResponse(success=True, stream=stream_info_out(ns, details))

    async def purge_stream(
        self, call: Call, message: pb.PurgeStreamRequest
    ) -> pb.PurgeStreamResponse:
        ns = call.ns
        name = ns.stream(message.stream_name)
        subject = ns.pattern(message.subject) if message.subject else ""
        purged = await self.js.purge_stream(name, subject)
        return pb.PurgeStreamResponse(success=True, purged_count=purged)

    # -- consumers -------------------------------------------------------------------------------

    async def create_consumer(
        self, call: Call, message: pb.CreateConsumerRequest
    ) -> pb.CreateConsumerResponse:
        ns = call.ns
        stream = ns.stream(message.stream_name)
        spec = consumer_spec(ns, message.config or pb.ConsumerConfig())
        if spec.dead_letter:
            await self._check_dead_letter(ns, stream, spec.dead_letter)
        details = await self.js.add_consumer(stream, spec)
        return pb.CreateConsumerResponse(
            success=True, consumer=consumer_info_out(ns, details), message="consumer ready"
        )

    async def _check_dead_letter(self, ns: Namespace, stream: str, name: str) -> None:
        """The dead-letter stream exists in the caller's namespace and can take copies; the
        relay's advisory stream is set up before the first consumer that needs it."""
        field = "config.dead_letter_stream"
        target = ns.stream(name, field)
        if target == stream:
            raise InvalidArgument(field, "must differ from the consumer's own stream")
        try:
            details = await self.js.stream_info(target, what=f"dead-letter stream {name!r}")
        except NotFound:
            raise NotFound(
                f"dead-letter stream {excerpt(name)} does not exist (create it first)"
            ) from None
        if copy_subject(ns, details.spec.subjects, ns.subject_prefix + "x") is None:
            first = ns.from_subject(details.spec.subjects[0]) if details.spec.subjects else ""
            raise InvalidArgument(
                field,
                f"stream {excerpt(name)}'s first subject {excerpt(first or '')} must be literal "
                "or end in '.>' (that is where copies are stored)",
            )
        await self.advisories.ensure()

    async def delete_consumer(
        self, call: Call, message: pb.DeleteConsumerRequest
    ) -> pb.DeleteConsumerResponse:
        ns = call.ns
        await self.js.delete_consumer(
            ns.stream(message.stream_name), ns.consumer(message.consumer_name)
        )
        return pb.DeleteConsumerResponse(success=True)

    async def get_consumer_info(
        self, call: Call, message: pb.GetConsumerInfoRequest
    ) -> pb.GetConsumerInfoResponse:
        ns = call.ns
        details = await self.js.consumer_info(
            ns.stream(message.stream_name), ns.consumer(message.consumer_name)
        )
        return pb.GetConsumerInfoResponse(consumer=consumer_info_out(ns, details))

    async def list_consumers(
        self, call: Call, message: pb.ListConsumersRequest
    ) -> pb.ListConsumersResponse:
        ns = call.ns
        consumers = await self.js.list_consumers(ns.stream(message.stream_name))
        return pb.ListConsumersResponse(
            consumers=[consumer_info_out(ns, d) for d in sorted(consumers, key=lambda d: d.name)]
        )

    # -- publishing ------------------------------------------------------------------------------

    async def _target_stream(self, ns: Namespace, stream_name: str, subject: str) -> str:
        """The NATS stream to publish ``subject`` (NATS name) into.

        Named: it must capture the subject. Unnamed (old clients that never sent one): the
        tenant's stream that captures it.
        """
        js = self.js
        if not stream_name:
            for details in await js.list_streams(subject):
                if ns.from_name(details.spec.name) is not None:
                    return details.spec.name
            raise InvalidArgument(
                "subject", f"{ns.from_subject(subject)!r} is not captured by any of your streams"
            )
        return ns.stream(stream_name)

    async def _stream_subjects(self, name: str) -> tuple[str, ...]:
        cache = self.subjects
        now = time.monotonic()
        entry = cache.get(name)
        if entry is None or now - entry.read_at > STREAM_SUBJECTS_TTL:
            try:
                details = await self.js.stream_info(name)
            except (DeadlineExceeded, Unavailable) as exc:
                # No stream leader answers while one is elected. A stale answer is good enough
                # (NATS checks Nats-Expected-Stream itself); without one, nothing was published,
                # which is UNAVAILABLE (retry), not DEADLINE_EXCEEDED ("may have been stored").
                if entry is not None:
                    return entry.subjects
                raise Unavailable(
                    f"stream {name} did not answer (it may be electing a leader); nothing was "
                    "published, retry"
                ) from exc
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

    async def publish_to_stream(
        self, call: Call, message: pb.PublishToStreamRequest
    ) -> pb.PublishToStreamResponse:
        ns = call.ns
        subject = ns.subject(message.subject)
        stream = await self._target_stream(ns, message.stream_name, subject)
        await self._check_captured(ns, stream, subject)
        js = self.js
        budget = call.timeout(None, self.settings.request_timeout, "timeout")
        headers = with_ttl(message.headers, message.ttl, never=message.ttl_never)
        try:
            ack = await js.publish(
                subject, message.data, stream=stream, headers=headers, timeout=budget
            )
        except TTLDisabled:
            raise FailedPrecondition(
                f"stream {ns.from_name(stream)!r} does not allow per-message TTLs; "
                "UpdateStream with config.allow_msg_ttl=true first, or publish without ttl"
            ) from None
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

    async def publish_to_stream_batch(
        self, call: Call, message: pb.PublishToStreamBatchRequest
    ) -> pb.PublishToStreamBatchResponse:
        ns = call.ns
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
        batch: list[tuple[str, bytes, Mapping[str, str]]] = []
        positions: list[int] = []

        def refused(index: int, exc: GatewayError) -> pb.StreamPublishResult:
            field = f"messages[{index}]"
            text = tenant_view(exc, root).message
            text = text if text.startswith(field) else f"{field}: {text}"
            return pb.StreamPublishResult(
                success=False, error=text, status_code=status_code_of(exc)
            )

        mapped: dict[str, str] = {}  # subjects found captured (a batch repeats a few)
        items: Sequence[StreamItem] = message.messages  # upb messages off the wire (wire.items)
        for index, item in enumerate(items):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let other tenants' calls run between slices
            try:
                subject = mapped.get(item.subject)
                if subject is None:
                    subject = ns.subject(item.subject, f"messages[{index}].subject")
                    if not captured_by(subject, subjects):
                        raise InvalidArgument(
                            f"messages[{index}].subject",
                            f"{item.subject!r} is not captured by stream {ns.from_name(stream)!r}",
                        )
                    mapped[item.subject] = subject
                if item.headers:
                    check_headers(item.headers, f"messages[{index}].headers")
            except GatewayError as exc:
                results[index] = refused(index, exc)
                continue
            headers = item.headers  # the adapter copies it (adding Nats-Expected-Stream)
            if item.msg_id:
                headers = {**headers, "Nats-Msg-Id": item.msg_id}
            batch.append((subject, item.data, headers))
            positions.append(index)
        outcomes = await self.js.publish_many(
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

    def hand_out(self, ns: Namespace, delivery: JetStreamDelivery) -> str:
        """Remember a delivery for ack-by-sequence; its ack token."""
        self.memory.remember(
            (ns.key, delivery.stream, delivery.consumer, delivery.stream_seq), delivery.reply
        )
        return self.tokens.issue(ns.key, delivery.reply)

    def present(self, ns: Namespace, delivery: JetStreamDelivery) -> pb.JetStreamMessage:
        """Remember a delivery for ack-by-sequence and present it in the tenant's view."""
        return pb.JetStreamMessage(
            subject=ns.from_subject(delivery.subject) or "",
            data=delivery.data,
            headers={k: v for k, v in delivery.headers.items() if k not in HIDDEN_HEADERS},
            sequence=delivery.stream_seq,
            timestamp=delivery.timestamp,
            num_delivered=clamp32(delivery.num_delivered),
            ack_token=self.hand_out(ns, delivery),
            consumer_sequence=delivery.consumer_seq,
            num_pending=delivery.num_pending,
        )

    async def pull_messages(
        self, call: Call, message: pb.PullMessagesRequest
    ) -> pb.PullMessagesResponse:
        ns = call.ns
        stream = ns.stream(message.stream_name)
        consumer = ns.consumer(message.consumer_name)
        batch = message.batch_size or 1
        if not 1 <= batch <= MAX_PULL_BATCH:
            raise InvalidArgument("batch_size", f"must be 1 to {MAX_PULL_BATCH} (got {batch})")
        wait = call.timeout(message.max_wait, DEFAULT_PULL_WAIT, "max_wait")
        left = call.time_left()
        if left is not None:
            # Answer (possibly with nothing) before the client's deadline, not after it.
            wait = min(wait, max(left - PULL_DEADLINE_MARGIN, 0.0))
        # Keep the response well inside the gateway's message size limit (a single larger
        # message still goes alone).
        budget = self.settings.max_message_size // 2
        deliveries = await self.js.fetch(stream, consumer, batch, wait, budget)
        return pb.PullMessagesResponse(messages=[self.present(ns, d) for d in deliveries])

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
        parts = self
        if token:
            ack = self._from_token(ns, token, field, {})
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

    def _from_token(
        self, ns: Namespace, token: str, field: str, owned: dict[str, bool]
    ) -> AckSubject:
        """The delivery a token names, checked against the caller's namespace.

        ``owned`` remembers, per NATS stream name, whether it is the caller's: a batch of acks
        usually names one stream, so the namespace check runs once per stream, not per token.
        """
        ack = self.tokens.verify(token, ns.key, field)
        mine = owned.get(ack.stream)
        if mine is None:
            mine = owned[ack.stream] = ns.from_name(ack.stream) is not None
        if not mine:
            raise PermissionDenied(f"{field}: names a stream outside your namespace")
        return ack

    async def _act(
        self, ack: AckSubject, action: pb.AckAction, delay: float = 0.0, reason: str = ""
    ) -> None:
        await self.js.ack(ack.subject, _ack_payload(action, delay, reason))
        self._settled(ack, action)

    async def _dead_letter(self, ack: AckSubject, reason: str) -> None:
        """Before a TERM: copy the delivery into its consumer's dead-letter stream, if it has
        one. Done here, not from the advisory, because a TERM removes the message from a
        work-queue (or fully acknowledged interest) stream at once; the advisory the TERM causes
        is then a no-op (same Nats-Msg-Id). A copy that cannot be stored refuses the TERM."""
        advisory = Advisory(
            TERMINATED, ack.stream, ack.consumer, ack.stream_seq, ack.num_delivered, reason
        )
        try:
            await self.dead_letters.copy(advisory, cached=True)
        except CopyFailed as exc:
            raise FailedPrecondition(
                f"{exc}: nothing was terminated (the message would have no copy); create it, "
                "or nak the message"
            ) from None

    def _settled(self, ack: AckSubject, action: pb.AckAction) -> None:
        """Tell this replica's Consume windows that a delivery was acted on."""
        self.windows.settle(
            ack.stream,
            ack.consumer,
            ack.stream_seq,
            in_progress=action == pb.AckAction.IN_PROGRESS,
            cumulative=action == pb.AckAction.ACK,
        )

    async def ack_message(self, call: Call, message: pb.AckMessageRequest) -> pb.AckMessageResponse:
        ns = call.ns
        reason = _term_reason(message.reason, message.action, "reason")
        ack = self._resolve(
            ns, message.ack_token, message.stream_name, message.consumer_name, message.sequence
        )
        if message.action == pb.AckAction.TERMINATE:
            await self._dead_letter(ack, reason)
        await self._act(ack, message.action, reason=reason)
        return pb.AckMessageResponse(success=True)

    async def nak_message(self, call: Call, message: pb.NakMessageRequest) -> pb.NakMessageResponse:
        ns = call.ns
        delay = seconds_field(message.delay, "delay", maximum=MAX_NAK_DELAY)
        ack = self._resolve(
            ns, message.ack_token, message.stream_name, message.consumer_name, message.sequence
        )
        await self._act(ack, pb.AckAction.NAK, delay)
        return pb.NakMessageResponse(success=True)

    async def ack_messages(
        self, call: Call, message: pb.AckMessagesRequest
    ) -> pb.AckMessagesResponse:
        ns = call.ns
        delay = seconds_field(message.nak_delay, "nak_delay", maximum=MAX_NAK_DELAY)
        reason = _term_reason(message.term_reason, message.action, "term_reason")
        payload = _ack_payload(message.action, delay, reason)
        root = self.settings.namespace_root
        results: list[pb.AckResult | None] = [None] * len(message.ack_tokens)
        resolved: list[AckSubject] = []
        positions: list[int] = []
        owned: dict[str, bool] = {}

        def refused(exc: GatewayError) -> pb.AckResult:
            text = tenant_view(exc, root).message
            return pb.AckResult(success=False, error=text, status_code=status_code_of(exc))

        for index, token in enumerate(message.ack_tokens):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let other tenants' calls run between slices
            try:
                if not token:
                    raise InvalidArgument(f"ack_tokens[{index}]", "must not be empty")
                resolved.append(self._from_token(ns, token, f"ack_tokens[{index}]", owned))
                positions.append(index)
            except GatewayError as exc:
                results[index] = refused(exc)
        if message.action == pb.AckAction.TERMINATE:  # copies first, as in ack_message
            kept: list[AckSubject] = []
            kept_at: list[int] = []
            for index, ack in zip(positions, resolved, strict=True):
                try:
                    await self._dead_letter(ack, reason)
                except GatewayError as exc:
                    results[index] = refused(exc)
                    continue
                kept.append(ack)
                kept_at.append(index)
            resolved, positions = kept, kept_at
        outcomes = await self.js.ack_many(
            [(ack.subject, payload) for ack in resolved],
            inflight=self.settings.stream_publish_inflight,
        )
        settle = self.windows.settle
        in_progress = message.action == pb.AckAction.IN_PROGRESS
        cumulative = message.action == pb.AckAction.ACK
        for index, ack, outcome in zip(positions, resolved, outcomes, strict=True):
            if outcome is None:
                settle(
                    ack.stream,
                    ack.consumer,
                    ack.stream_seq,
                    in_progress=in_progress,
                    cumulative=cumulative,
                )
                results[index] = _ACKED
            else:
                results[index] = refused(outcome)
        done = [r for r in results if r is not None]
        return pb.AckMessagesResponse(succeeded=sum(1 for r in done if r.success), results=done)

    # -- continuous consumption ------------------------------------------------------------------

    async def consume(
        self, call: Call, message: pb.ConsumeRequest
    ) -> AsyncGenerator[pb.ConsumeResponse | Frames, None]:
        ns = call.ns
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
        if max_bytes > self.settings.consume_max_bytes:
            # What a stream may have delivered and unacked is pulled from NATS at once: unbounded,
            # it could get the gateway's shared connection cut as a slow consumer.
            raise InvalidArgument(
                "max_bytes",
                f"must be at most {self.settings.consume_max_bytes} bytes "
                f"(NATSGW_CONSUME_MAX_BYTES; got {max_bytes})",
            )
        heartbeat = seconds_field(message.heartbeat, "heartbeat", maximum=MAX_HEARTBEAT)
        heartbeat = heartbeat or DEFAULT_HEARTBEAT
        if heartbeat < MIN_HEARTBEAT:
            raise InvalidArgument("heartbeat", f"must be at least {MIN_HEARTBEAT:g}s")
        per_response = max_batch(message.max_batch, self.settings.max_batch_messages)
        parts = self
        info = await parts.js.consumer_info(stream, consumer)
        window = FlowWindow(
            max_msgs,
            max_bytes,
            info.spec.ack_wait or NATS_DEFAULT_ACK_WAIT,
            track=info.spec.ack_policy != "none",
            ack_all=info.spec.ack_policy == "all",
        )
        pipe = await parts.js.open_pull(stream, consumer, max_msgs)
        session = ConsumeSession(
            self.js,
            stream,
            consumer,
            pipe,
            window,
            heartbeat,
            per_response,
        )
        # Registered with the gateway's streams so that shutdown ends it cleanly (status OK),
        # like Subscribe. The key holds spaces: no tenant subject can name it in Unsubscribe.
        shutdown = Mailbox(1, 1, self.settings.slow_consumer_policy)
        registry_key = f"consume {stream} {consumer}"
        self.subscriptions.add(ns.key, registry_key, shutdown)
        watcher = asyncio.create_task(stop_on_end(shutdown, session), name="natsgw-consume-end")
        parts.windows.add(stream, consumer, window)
        try:
            await call.ready()
            encoder = ConsumeEncoder(ns, functools.partial(self.hand_out, ns))
            async for out in session.run():
                if not isinstance(out, Burst):
                    yield out  # a heartbeat
                elif call.stream is not None:  # served: responses encoded, written together
                    yield Frames([encoder.response(response) for response in out.responses])
                else:  # driven directly (scripts, unit tests): plain messages
                    for deliveries, messages, size in out.responses:
                        shown = [self.present(ns, delivery) for delivery in deliveries]
                        yield pb.ConsumeResponse(
                            message=shown[0],
                            batch=shown[1:],
                            outstanding_messages=messages,
                            outstanding_bytes=size,
                        )
        finally:
            # Synchronous releases first: a second cancellation cannot skip them.
            watcher.cancel()
            self.subscriptions.remove(ns.key, registry_key, shutdown)
            parts.windows.remove(stream, consumer, window)
            await pipe.close()
            await asyncio.gather(watcher, return_exceptions=True)

    # -- consumer control -------------------------------------------------------------------------

    async def update_consumer(
        self, call: Call, message: pb.UpdateConsumerRequest
    ) -> pb.UpdateConsumerResponse:
        """Change an existing consumer; the gateway's own metadata entries are carried over."""
        ns = call.ns
        stream = ns.stream(message.stream_name)
        config = message.config or pb.ConsumerConfig()
        if not (config.name or config.durable_name):
            raise InvalidArgument("config.name", "name the consumer to update")
        spec = consumer_spec(ns, config)
        if spec.dead_letter:  # as CreateConsumer checks it (none given: the current one stays)
            await self._check_dead_letter(ns, stream, spec.dead_letter)
        current = await self.js.consumer_info(stream, spec.durable_name or spec.name)
        kept = internal_metadata(current.spec.metadata)
        if kept:
            spec = dataclasses.replace(spec, metadata={**spec.metadata, **kept})
        until = spec.pause_until
        if until is not None and until != current.spec.pause_until:
            _future(until, "config.pause_until")
        details = await self.control.update(stream, spec)
        if until is not None and until != details.spec.pause_until:
            # NATS ignores pause_until in an update: a new one is applied as PauseConsumer does.
            await self.control.pause(stream, details.name, until)
            details = await self.js.consumer_info(stream, details.name)
        return pb.UpdateConsumerResponse(success=True, consumer=consumer_info_out(ns, details))

    async def pause_consumer(
        self, call: Call, message: pb.PauseConsumerRequest
    ) -> pb.PauseConsumerResponse:
        ns = call.ns
        stream = ns.stream(message.stream_name)
        name = ns.consumer(message.consumer_name)
        until = message.pause_until
        if until is None:
            raise InvalidArgument("pause_until", "required: when deliveries start again")
        _future(until, "pause_until")
        return pause_out(await self.control.pause(stream, name, until))

    async def resume_consumer(
        self, call: Call, message: pb.ResumeConsumerRequest
    ) -> pb.PauseConsumerResponse:
        ns = call.ns
        stream = ns.stream(message.stream_name)
        name = ns.consumer(message.consumer_name)
        return pause_out(await self.control.pause(stream, name, None))

    async def reset_consumer(
        self, call: Call, message: pb.ResetConsumerRequest
    ) -> pb.ResetConsumerResponse:
        """Seek with nats-server's own CONSUMER.RESET (no recreation: name, config and the
        consumer's identity stay; outstanding deliveries are forgotten)."""
        ns = call.ns
        stream = ns.stream(message.stream_name)
        name = ns.consumer(message.consumer_name)
        if message.sequence < 0:
            raise InvalidArgument("sequence", f"must not be negative (got {message.sequence})")
        if message.sequence and message.time is not None:
            raise InvalidArgument("sequence", "set either sequence or time, not both")
        control = self.control
        if message.time is not None:
            seq = await control.seq_at(stream, message.time)
        else:
            seq = message.sequence
        result = await control.reset(stream, name, seq)
        return pb.ResetConsumerResponse(
            consumer=consumer_info_out(ns, result.details), reset_sequence=result.reset_seq
        )


#: Every acted-on token of an AckMessages call answers the same (only ever encoded, never changed).
_ACKED = pb.AckResult(success=True)


def _future(until: datetime.datetime, field: str) -> None:
    if until <= datetime.datetime.now(datetime.UTC):
        raise InvalidArgument(field, "must be in the future (use ResumeConsumer to lift a pause)")


def _ack_payload(action: pb.AckAction, delay: float, reason: str = "") -> bytes:
    """Also the check that ``action`` is one the wire defines (INVALID_ARGUMENT otherwise)."""
    return ack_payload(wire_enum(ACK_ACTIONS, action, "action"), delay, reason)


#: Longest TERM reason, in UTF-8 bytes (it travels in an ack and in a header of the copy).
MAX_TERM_REASON = 256


def _term_reason(reason: str, action: pb.AckAction, field: str) -> str:
    """A terminate's reason: one short line of text, and only with ACK_ACTION_TERMINATE."""
    if not reason:
        return ""
    if action != pb.AckAction.TERMINATE:
        raise InvalidArgument(field, "is only for ACK_ACTION_TERMINATE")
    size = len(reason.encode("utf-8", "surrogatepass"))
    if size > MAX_TERM_REASON:
        raise InvalidArgument(field, f"is {size} bytes; the limit is {MAX_TERM_REASON}")
    if not reason.isprintable():
        raise InvalidArgument(field, "must be one line of printable text")
    return reason


def _ack_subject(reply: str) -> AckSubject:
    parsed = parse_ack_subject(reply)
    if parsed is None:  # only parsed ack subjects are ever remembered
        raise FailedPrecondition("the remembered delivery has no ack subject")
    return parsed
