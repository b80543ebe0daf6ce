"""Core NATS messaging: Publish, PublishBatch, Subscribe, QueueSubscribe, Unsubscribe, Request."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping

from natsgw._generated import nats_service_pb2 as wire
from natsgw._generated.isa import nats as pb
from natsgw.errors import GatewayError, InvalidArgument
from natsgw.service.base import Handlers
from natsgw.service.streaming import writer_for_current_call
from natsgw.service.subscriptions import Delivery, Mailbox
from natsgw.tenancy import Namespace


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
#: ``max_batch`` bounds, and the payload bytes one batched response carries beyond its first
#: message (well inside grpcio's default 4 MiB receive limit).
MAX_BATCH = 1000
_BATCH_BYTES = 1024 * 1024


def _max_batch(value: int) -> int:
    if not 0 <= value <= MAX_BATCH:
        raise InvalidArgument("max_batch", f"must be 0 to {MAX_BATCH} (got {value})")
    return max(value, 1)


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
        out.timestamp.seconds = seconds
        out.timestamp.nanos = nanos
        out.sequence = delivery.sequence
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


class MessagingHandlers(Handlers):
    async def publish(self, message: pb.PublishRequest) -> pb.PublishResponse:
        ns = await self.namespace(message)
        subject = ns.subject(message.subject)
        reply = ns.subject(message.reply_to, "reply_to") if message.reply_to else ""
        await self.adapter.publish(subject, message.data, headers=message.headers, reply=reply)
        return pb.PublishResponse(success=True, message="published")

    async def publish_batch(self, message: pb.PublishBatchRequest) -> pb.PublishBatchResponse:
        """Publish every valid message; report each refused one by index. Confirmed once."""
        ns = await self.namespace(message)
        errors: list[str] = []
        published = 0
        for index, item in enumerate(message.messages):
            field = f"messages[{index}]"
            try:
                subject = ns.subject(item.subject, f"{field}.subject")
                reply = ns.subject(item.reply_to, f"{field}.reply_to") if item.reply_to else ""
                await self.adapter.publish(
                    subject, item.data, headers=item.headers, reply=reply, confirm=False
                )
            except GatewayError as exc:
                text = exc.message
                errors.append(text if text.startswith(field) else f"{field}: {text}")
                continue
            published += 1
        if published:
            await self.adapter.confirm()
        return pb.PublishBatchResponse(success=not errors, published_count=published, errors=errors)

    async def subscribe(self, message: pb.SubscribeRequest) -> AsyncIterator[pb.MessageResponse]:
        _check_queue_group(message.queue_group, required=False)
        max_batch = _max_batch(message.max_batch)
        ns = await self.namespace(message)
        async for response in self._stream(ns, message.subject, message.queue_group, max_batch):
            yield response

    async def queue_subscribe(
        self, message: pb.QueueSubscribeRequest
    ) -> AsyncIterator[pb.MessageResponse]:
        _check_queue_group(message.queue_group, required=True)
        max_batch = _max_batch(message.max_batch)
        ns = await self.namespace(message)
        async for response in self._stream(ns, message.subject, message.queue_group, max_batch):
            yield response

    async def _stream(
        self, ns: Namespace, subject: str, queue_group: str, max_batch: int
    ) -> AsyncIterator[pb.MessageResponse]:
        pattern = ns.pattern(subject)
        settings = self.settings
        registry = self.deps.subscriptions
        with registry.lease(ns.key):
            mailbox = Mailbox(
                settings.subscription_buffer_msgs,
                settings.stream_buffer_bytes,
                settings.slow_consumer_policy,
            )
            membership = await self.deps.fanout.join(pattern, queue_group, mailbox)
            registry.add(ns.key, subject, mailbox)
            try:
                await self.announce_ready()
                # The first response goes through grpclib (the call pipeline sees it respond).
                first = await mailbox.take(max_batch, _BATCH_BYTES)
                if not first:
                    return
                response = _response(ns, first[0], mailbox.dropped)
                response.batch = [_response(ns, d, mailbox.dropped) for d in first[1:]]
                yield response
                writer = writer_for_current_call()
                encoder = _Encoder(ns)
                # Later ones: whatever is waiting goes out in one write (see FrameWriter), one
                # message per response unless the client asked for batches.
                batched = max_batch > 1
                limit, budget = (max_batch, _BATCH_BYTES) if batched else (_BURST, _BURST_BYTES)
                while deliveries := await mailbox.take(limit, budget):
                    dropped = mailbox.dropped
                    if writer is None:  # not served by grpclib (direct calls)
                        for delivery in deliveries:
                            yield _response(ns, delivery, dropped)
                        continue
                    if batched:
                        writer.add_encoded(encoder.batch(deliveries, dropped))
                    else:
                        for delivery in deliveries:
                            writer.add_encoded(encoder.one(delivery, dropped))
                    await writer.flush()
            finally:
                # Synchronous: a second cancellation cannot skip any of it.
                registry.remove(ns.key, subject, mailbox)
                membership.leave()

    async def unsubscribe(self, message: pb.UnsubscribeRequest) -> pb.UnsubscribeResponse:
        """Ends this tenant's streams on exactly that subject; success=false when none was open."""
        ns = await self.namespace(message)
        ns.pattern(message.subject)  # same rules as Subscribe
        ended = self.deps.subscriptions.end(ns.key, message.subject)
        return pb.UnsubscribeResponse(success=ended > 0)

    async def request(self, message: pb.RequestRequest) -> pb.RequestResponse:
        ns = await self.namespace(message)
        subject = ns.subject(message.subject)
        timeout = self.timeout(message.timeout, self.settings.request_timeout, "timeout")
        reply = await self.adapter.request(
            subject,
            message.data,
            inbox=ns.inbox(uuid.uuid4().hex),
            timeout=timeout,
            headers=message.headers,
        )
        return pb.RequestResponse(success=True, data=reply.data, headers=dict(reply.headers))
