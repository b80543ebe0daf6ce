"""Core NATS messaging: Publish, PublishBatch, Subscribe, QueueSubscribe, Unsubscribe, Request."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping

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
        ns = await self.namespace(message)
        async for response in self._stream(ns, message.subject, message.queue_group):
            yield response

    async def queue_subscribe(
        self, message: pb.QueueSubscribeRequest
    ) -> AsyncIterator[pb.MessageResponse]:
        _check_queue_group(message.queue_group, required=True)
        ns = await self.namespace(message)
        async for response in self._stream(ns, message.subject, message.queue_group):
            yield response

    async def _stream(
        self, ns: Namespace, subject: str, queue_group: str
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
                first = await mailbox.take(1)
                if not first:
                    return
                yield _response(ns, first[0], mailbox.dropped)
                writer = writer_for_current_call()
                # Later responses: whatever is waiting goes out in one write (see FrameWriter).
                while deliveries := await mailbox.take(_BURST, _BURST_BYTES):
                    if writer is None:
                        for delivery in deliveries:
                            yield _response(ns, delivery, mailbox.dropped)
                        continue
                    for delivery in deliveries:
                        writer.add(_response(ns, delivery, mailbox.dropped))
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
