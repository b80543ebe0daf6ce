"""Core NATS messaging: Publish, PublishBatch, Subscribe, QueueSubscribe, Unsubscribe, Request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.adapter.core import Outgoing
from natsgw.config import Settings
from natsgw.errors import GatewayError, InvalidArgument
from natsgw.pipeline.call import Call
from natsgw.service.pacing import YIELD_EVERY
from natsgw.service.subscriptions import Mailbox, SubscriptionRegistry
from natsgw.tenancy import Namespace, public_text

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


#: Every successful Publish answers the same (only ever encoded, never changed).
_PUBLISHED = pb.PublishResponse(success=True, message="published")


class MessagingService:
    """Core NATS: publish, request and subscription streams inside the caller's namespace."""

    def __init__(
        self, settings: Settings, adapter: NatsAdapter, subscriptions: SubscriptionRegistry
    ) -> None:
        self.settings = settings
        self.adapter = adapter
        self.subscriptions = subscriptions

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
        mapped: dict[str, str] = {}  # a batch usually repeats a few subjects
        for index, item in enumerate(message.messages):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let other tenants' calls run between slices
            try:
                subject = mapped.get(item.subject)
                if subject is None:
                    subject = ns.subject(item.subject, f"messages[{index}].subject")
                    mapped[item.subject] = subject
                reply = item.reply_to
                if reply:
                    reply = ns.subject(reply, f"messages[{index}].reply_to")
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
    ) -> AsyncGenerator[pb.MessageResponse, None]:
        _check_queue_group(message.queue_group, required=False)
        return self._stream(call, message.subject, message.queue_group)

    def queue_subscribe(
        self, call: Call, message: pb.QueueSubscribeRequest
    ) -> AsyncGenerator[pb.MessageResponse, None]:
        _check_queue_group(message.queue_group, required=True)
        return self._stream(call, message.subject, message.queue_group)

    async def _stream(
        self, call: Call, subject: str, queue_group: str
    ) -> AsyncGenerator[pb.MessageResponse, None]:
        ns = call.ns
        pattern = ns.pattern(subject)
        settings = self.settings
        mailbox = Mailbox(
            settings.subscription_buffer_msgs,
            settings.subscription_buffer_bytes,
            settings.slow_consumer_policy,
        )
        sub = await self.adapter.subscribe(
            pattern,
            mailbox.offer,
            queue=queue_group,
            on_overflow=mailbox.lost_upstream,
            # The client library's own queue only bridges to the mailbox; twice its size keeps
            # bursts from being dropped there while the total stays bounded.
            pending_msgs=2 * settings.subscription_buffer_msgs,
            pending_bytes=2 * settings.subscription_buffer_bytes,
        )
        registry = self.subscriptions
        registry.add(ns.key, subject, mailbox)
        try:
            await call.ready()
            while (delivery := await mailbox.get()) is not None:
                msg = delivery.message
                yield pb.MessageResponse(
                    subject=ns.from_subject(msg.subject) or "",
                    data=msg.data,
                    headers=_tenant_headers(ns, msg.headers) if msg.headers else {},
                    # A reply subject outside the tenant's namespace cannot be answered through
                    # the gateway, so it is not shown.
                    reply_to=(ns.from_subject(msg.reply) or "") if msg.reply else "",
                    timestamp=delivery.received_at,
                    sequence=delivery.sequence,
                )
        finally:
            registry.remove(ns.key, subject, mailbox)
            await sub.unsubscribe()

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
