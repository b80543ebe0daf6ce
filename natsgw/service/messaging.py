"""Core NATS messaging: Publish, PublishBatch, Subscribe, QueueSubscribe, Unsubscribe, Request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence

from natsgw._generated import nats_service_pb2 as wire
from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.adapter.core import Outgoing
from natsgw.config import Settings
from natsgw.errors import GatewayError, InvalidArgument
from natsgw.pipeline.call import Call
from natsgw.pipeline.streaming import Frames
from natsgw.service.fanout import FanOut
from natsgw.service.pacing import YIELD_EVERY, max_batch
from natsgw.service.subscriptions import Delivery, Mailbox, SubscriptionRegistry
from natsgw.tenancy import Namespace, public_text
from natsgw.wire.codec import constant
from natsgw.wire.items import BatchItem

#: PublishBatch reports at most this many refused items one by one, then a count of the rest.
MAX_REPORTED_ERRORS = 100


def _check_queue_group(queue_group: str, required: bool) -> None:
    if not queue_group:
        if required:
            raise InvalidArgument("queue_group", "is required for QueueSubscribe")
        return
    if any(ch.isspace() or not ch.isprintable() for ch in queue_group):
        raise InvalidArgument(
            "queue_group", f"{queue_group!r} must not contain whitespace or control characters"
        )


#: Headers whose value is a NATS stream name: shown to the tenant by its own name, or not at all.
_STREAM_NAME_HEADERS = ("Nats-Expected-Stream",)


def _tenant_headers(ns: Namespace, headers: Mapping[str, str]) -> dict[str, str]:
    """Headers as the tenant may see them: no NATS stream names or tenant keys leak."""
    shown = dict(headers)
    for name in _STREAM_NAME_HEADERS:
        if name in shown:
            tenant_name = ns.from_name(shown[name])
            if tenant_name is None:
                del shown[name]
            else:
                shown[name] = tenant_name
    return shown


#: Most deliveries (and payload bytes, beyond the first) one write of a Subscribe stream carries.
_BURST = 256
_BURST_BYTES = 256 * 1024
#: Payload bytes one batched response carries beyond its first message (well inside grpcio's
#: default 4 MiB receive limit).
_BATCH_BYTES = 1024 * 1024


class _Encoder:
    """MessageResponse bytes straight from a delivery, through Google's upb classes.

    A delivery stream's per-message cost is what the subscriber's rate is made of: the dataclass
    plus codec-bridge route costs several times more than filling the upb message directly (a
    profile of a Subscribe fed by PublishBatch put the bridge and timestamp conversion at a third
    of the gateway's time). The wire bytes are the same (tests/integration read them back).
    """

    __slots__ = ("_last_subject", "_ns", "_shown_subject")

    def __init__(self, ns: Namespace) -> None:
        self._ns = ns
        self._last_subject = ""
        self._shown_subject = ""

    def _fill(self, out: wire.MessageResponse, delivery: Delivery, dropped: int) -> None:
        msg = delivery.message
        if msg.subject != self._last_subject:  # a stream's messages mostly share one subject
            self._last_subject = msg.subject
            self._shown_subject = self._ns.from_subject(msg.subject) or ""
        out.subject = self._shown_subject
        out.data = msg.data
        if msg.headers:
            out.headers.update(_tenant_headers(self._ns, msg.headers))
        if msg.reply:
            out.reply_to = self._ns.from_subject(msg.reply) or ""
        seconds, nanos = divmod(delivery.received_ns, 1_000_000_000)
        stamp = out.timestamp
        stamp.seconds = seconds
        stamp.nanos = nanos
        out.sequence = delivery.sequence
        if dropped:  # proto3: zero is not written either way
            out.dropped = dropped

    def one(self, delivery: Delivery, dropped: int) -> bytes:
        out = wire.MessageResponse()
        self._fill(out, delivery, dropped)
        return bytes(out.SerializeToString())

    def batch(self, deliveries: list[Delivery], dropped: int) -> bytes:
        out = wire.MessageResponse()
        self._fill(out, deliveries[0], dropped)
        for delivery in deliveries[1:]:
            self._fill(out.batch.add(), delivery, dropped)
        return bytes(out.SerializeToString())


def _response(ns: Namespace, delivery: Delivery, dropped: int) -> pb.MessageResponse:
    msg = delivery.message
    return pb.MessageResponse(
        subject=ns.from_subject(msg.subject) or "",
        data=msg.data,
        headers=_tenant_headers(ns, msg.headers) if msg.headers else {},
        # A reply subject outside the tenant's namespace cannot be answered through the
        # gateway, so it is not shown.
        reply_to=(ns.from_subject(msg.reply) or "") if msg.reply else "",
        timestamp=delivery.received_at,
        sequence=delivery.sequence,
        dropped=dropped,
    )


#: Every successful Publish answers the same (only ever encoded, never changed).
_PUBLISHED = constant(pb.PublishResponse(success=True, message="published"))


class MessagingService:
    """Core NATS: publish, request and subscription streams inside the caller's namespace."""

    def __init__(
        self,
        settings: Settings,
        adapter: NatsAdapter,
        subscriptions: SubscriptionRegistry,
        fanout: FanOut,
    ) -> None:
        self.settings = settings
        self.adapter = adapter
        self.subscriptions = subscriptions
        #: Shared NATS subscriptions behind Subscribe / QueueSubscribe (natsgw.service.fanout).
        self.fanout = fanout

    async def publish(self, call: Call, message: pb.PublishRequest) -> pb.PublishResponse:
        ns = call.ns
        subject = ns.subject(message.subject)
        reply = ns.subject(message.reply_to, "reply_to") if message.reply_to else ""
        await self.adapter.publish(subject, message.data, headers=message.headers, reply=reply)
        return _PUBLISHED

    async def publish_batch(
        self, call: Call, message: pb.PublishBatchRequest
    ) -> pb.PublishBatchResponse:
        """Publish every valid message; report each refused one by index. Confirmed once."""
        ns = call.ns
        refused: list[tuple[int, GatewayError]] = []
        outgoing: list[Outgoing] = []
        # A batch usually repeats a few subjects (and reply subjects: same check, same mapping).
        mapped: dict[str, str] = {}
        items: Sequence[BatchItem] = message.messages  # upb messages off the wire (wire.items)
        for index, item in enumerate(items):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let other tenants' calls run between slices
            try:
                subject = mapped.get(item.subject)
                if subject is None:
                    subject = ns.subject(item.subject, f"messages[{index}].subject")
                    mapped[item.subject] = subject
                reply = item.reply_to
                if reply:
                    nats_reply = mapped.get(reply)
                    if nats_reply is None:
                        nats_reply = ns.subject(reply, f"messages[{index}].reply_to")
                        mapped[reply] = nats_reply
                    reply = nats_reply
            except GatewayError as exc:
                refused.append((index, exc))
                continue
            outgoing.append((index, subject, item.data, item.headers, reply))
        failed = await self.adapter.publish_many(outgoing, yield_every=YIELD_EVERY)
        published = len(outgoing) - len(failed)
        if published:
            await self.adapter.confirm()
        errors: list[str] = []
        for index, error in sorted(refused + failed, key=lambda pair: pair[0]):
            if len(errors) == MAX_REPORTED_ERRORS:
                break
            field = f"messages[{index}]"
            text = public_text(error.message, ns.root)
            errors.append(text if text.startswith(field) else f"{field}: {text}")
        unreported = len(refused) + len(failed) - len(errors)
        if unreported:  # the answer stays small however many items were refused
            errors.append(f"… and {unreported} more refused messages")
        return pb.PublishBatchResponse(success=not errors, published_count=published, errors=errors)

    def subscribe(
        self, call: Call, message: pb.SubscribeRequest
    ) -> AsyncGenerator[pb.MessageResponse | Frames, None]:
        _check_queue_group(message.queue_group, required=False)
        batch = max_batch(message.max_batch, self.settings.max_batch_messages)
        return self._stream(call, message.subject, message.queue_group, batch)

    def queue_subscribe(
        self, call: Call, message: pb.QueueSubscribeRequest
    ) -> AsyncGenerator[pb.MessageResponse | Frames, None]:
        _check_queue_group(message.queue_group, required=True)
        batch = max_batch(message.max_batch, self.settings.max_batch_messages)
        return self._stream(call, message.subject, message.queue_group, batch)

    async def _stream(
        self, call: Call, subject: str, queue_group: str, batch: int
    ) -> AsyncGenerator[pb.MessageResponse | Frames, None]:
        ns = call.ns
        pattern = ns.pattern(subject)
        settings = self.settings
        mailbox = Mailbox(
            settings.subscription_buffer_msgs,
            settings.stream_buffer_bytes,
            settings.slow_consumer_policy,
        )
        membership = await self.fanout.join(pattern, queue_group, mailbox)
        registry = self.subscriptions
        registry.add(ns.key, subject, mailbox)
        try:
            await call.ready()
            # Whatever is waiting goes out in one write (Frames: the pipeline writes them
            # together), one message per response unless the client asked for batches.
            encoder = _Encoder(ns)
            batched = batch > 1
            limit, budget = (batch, _BATCH_BYTES) if batched else (_BURST, _BURST_BYTES)
            while deliveries := await mailbox.take(limit, budget):
                dropped = mailbox.dropped
                if call.stream is None:  # driven directly (scripts, unit tests): plain messages
                    if batched:
                        first = _response(ns, deliveries[0], dropped)
                        first.batch = [_response(ns, d, dropped) for d in deliveries[1:]]
                        yield first
                    else:
                        for delivery in deliveries:
                            yield _response(ns, delivery, dropped)
                elif batched:
                    yield Frames([encoder.batch(deliveries, dropped)])
                else:
                    yield Frames([encoder.one(delivery, dropped) for delivery in deliveries])
        finally:
            # Synchronous: a second cancellation cannot skip any of it.
            registry.remove(ns.key, subject, mailbox)
            membership.leave()

    async def unsubscribe(
        self, call: Call, message: pb.UnsubscribeRequest
    ) -> pb.UnsubscribeResponse:
        """Ends this tenant's streams on exactly that subject; success=false when none was open."""
        ns = call.ns
        ns.pattern(message.subject)  # same rules as Subscribe
        ended = self.subscriptions.end(ns.key, message.subject)
        return pb.UnsubscribeResponse(success=ended > 0)

    async def request(self, call: Call, message: pb.RequestRequest) -> pb.RequestResponse:
        ns = call.ns
        subject = ns.subject(message.subject)
        timeout = call.timeout(message.timeout, self.settings.request_timeout, "timeout")
        reply = await self.adapter.request(
            subject,
            message.data,
            inbox=ns.inbox(uuid.uuid4().hex),
            timeout=timeout,
            headers=message.headers,
        )
        return pb.RequestResponse(success=True, data=reply.data, headers=dict(reply.headers))
