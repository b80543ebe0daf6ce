"""Consume: continuous delivery from a pull consumer within a client-set flow-control window.

:class:`ConsumeSession` decides what to send; the handler (natsgw.service.jetstream) presents it.
Deliveries already waiting go out together as one :class:`Burst` (one socket write for all of
them, natsgw.pipeline.streaming): a profile of one-message-per-response Consume put a third of
the gateway's CPU in one ``transport.write`` per delivery. :class:`ConsumeEncoder` turns a burst
into ConsumeResponse bytes through Google's upb classes, without the dataclass + codec-bridge
route (another ~15 %).
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Callable

import structlog

from natsgw._generated import nats_service_pb2 as wire
from natsgw._generated.isa import nats as pb
from natsgw.adapter.core import backoff_delay
from natsgw.adapter.jetstream import JetStreamAdapter, PullPipe
from natsgw.adapter.types import (
    REQUEST_ENDED,
    Heartbeat,
    JetStreamDelivery,
    LeadershipChange,
    NoResponders,
    PullOutcome,
    TooLarge,
)
from natsgw.errors import DeadlineExceeded, Unavailable
from natsgw.service.deliveries import FlowWindow
from natsgw.service.jetstream_wire import HIDDEN_HEADERS, clamp32
from natsgw.service.subscriptions import Mailbox
from natsgw.tenancy import Namespace

log = structlog.get_logger("natsgw.service.consume")

#: How long a pull request of a Consume stream lives at NATS before it is renewed.
CONSUME_PULL_EXPIRES = 30.0
#: Payload bytes a batched Consume response collects beyond its first message.
BATCH_BYTES = 1024 * 1024
#: Most deliveries, and payload bytes (beyond the first), that go out together in one burst
#: (a batched stream: at least one full batch).
BURST = 256
BURST_BYTES = 1024 * 1024
#: How often a Consume stream whose window is full looks at the consumer's ack floor in NATS
#: (acks sent through another replica free its window that way).
CONSUME_RECONCILE_EVERY = 1.0


async def stop_on_end(mailbox: Mailbox, session: ConsumeSession) -> None:
    await mailbox.get()  # returns None once the gateway ends its streams
    session.stop()


#: One response of a burst: its deliveries (the first is ``message``, the others ``batch``) and
#: the flow-control window right after it (outstanding messages, bytes).
Response = tuple[list[JetStreamDelivery], int, int]


class Burst:
    """Responses that were ready at once, in order; written together."""

    __slots__ = ("responses",)

    def __init__(self, responses: list[Response]) -> None:
        self.responses = responses


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class ConsumeEncoder:
    """ConsumeResponse bytes straight from deliveries, through Google's upb classes.

    Same wire bytes as the dataclass route (``Timestamp.FromDatetime`` keeps microseconds, so
    does this); ``hand_out`` remembers each delivery and issues its ack token.
    """

    __slots__ = ("_hand_out", "_last_subject", "_ns", "_shown_subject")

    def __init__(self, ns: Namespace, hand_out: Callable[[JetStreamDelivery], str]) -> None:
        self._ns = ns
        self._hand_out = hand_out
        self._last_subject = ""
        self._shown_subject = ""

    def _fill(self, out: wire.JetStreamMessage, delivery: JetStreamDelivery) -> None:
        if delivery.subject != self._last_subject:  # a stream's messages mostly share one
            self._last_subject = delivery.subject
            self._shown_subject = self._ns.from_subject(delivery.subject) or ""
        out.subject = self._shown_subject
        out.data = delivery.data
        headers = delivery.headers
        if headers:
            shown = {k: v for k, v in headers.items() if k not in HIDDEN_HEADERS}
            if shown:  # stream publishes carry Nats-Expected-Stream only, mostly
                out.headers.update(shown)
        out.sequence = delivery.stream_seq
        since = delivery.timestamp - _EPOCH
        stamp = out.timestamp
        stamp.seconds = since.days * 86400 + since.seconds
        stamp.nanos = since.microseconds * 1000
        out.num_delivered = clamp32(delivery.num_delivered)
        out.ack_token = self._hand_out(delivery)
        out.consumer_sequence = delivery.consumer_seq
        out.num_pending = delivery.num_pending

    def response(self, response: Response) -> bytes:
        deliveries, outstanding_messages, outstanding_bytes = response
        out = wire.ConsumeResponse()
        fill = self._fill
        fill(out.message, deliveries[0])
        if len(deliveries) > 1:
            add = out.batch.add
            for delivery in deliveries[1:]:
                fill(add(), delivery)
        out.outstanding_messages = outstanding_messages
        out.outstanding_bytes = outstanding_bytes
        return bytes(out.SerializeToString())


class ConsumeSession:
    """One Consume stream: keeps one pull request open while the window has room."""

    def __init__(
        self,
        js: JetStreamAdapter,
        stream: str,
        consumer: str,
        pipe: PullPipe,
        window: FlowWindow,
        heartbeat: float,
        max_batch: int = 1,
    ) -> None:
        self.js = js
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
        self.max_batch = max_batch
        #: A status read while collecting a batch, handled on the next turn.
        self._held: PullOutcome | None = None

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

    async def run(self) -> AsyncIterator[pb.ConsumeResponse | Burst]:
        """Heartbeats as ConsumeResponse; deliveries as bursts (the caller presents them)."""
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
            item: PullOutcome | None = self._held
            self._held = None
            if item is None:
                item = await self.pipe.next(min(wake, stale_at) - clock())
            if item is None:
                if clock() >= stale_at:
                    log.info("consume_pull_lost", stream=self.stream, consumer=self.consumer)
                    self.open = False
                continue
            last_heard = clock()
            if isinstance(item, JetStreamDelivery):
                yield await self._burst(item)
                last_sent = clock()
                continue
            if isinstance(item, Heartbeat):
                continue
            self.open = False
            if isinstance(item, (*REQUEST_ENDED, LeadershipChange)):
                continue
            if isinstance(item, TooLarge):
                # The next message does not fit the byte window: wait for room; a message
                # larger than the whole window goes alone once nothing is outstanding.
                self.oversize = self.window.messages == 0
                continue
            if isinstance(item, NoResponders):
                # JetStream not ready yet after a restart, or the consumer is gone (then the
                # stream ends NOT_FOUND).
                with contextlib.suppress(Unavailable, DeadlineExceeded):
                    await self.js.consumer_info(self.stream, self.consumer)
                self.failures += 1
                retry_at = clock() + backoff_delay(self.failures)
                continue
            raise item.error  # ConsumerDeleted (NOT_FOUND) or PullRefused

    def _account(self, delivery: JetStreamDelivery) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.open = False
        self.window.add(delivery.stream_seq, delivery.nats_size)

    async def _burst(self, first: JetStreamDelivery) -> Burst:
        """``first`` and the deliveries already waiting behind it, grouped into responses of
        ``max_batch``; every delivery is in the window before its response is built."""
        window = self.window
        per_response = self.max_batch
        most = max(BURST, per_response)
        responses: list[Response] = []
        current: list[JetStreamDelivery] = []
        batch_bytes = burst_bytes = count = 0
        delivery = first
        while True:
            self._account(delivery)
            current.append(delivery)
            size = len(delivery.data)
            batch_bytes += size
            burst_bytes += size
            count += 1
            if len(current) >= per_response or batch_bytes >= BATCH_BYTES:
                responses.append((current, window.messages, window.bytes))
                current, batch_bytes = [], 0
            if count >= most or burst_bytes >= BURST_BYTES or not self.open:
                break
            more = await self.pipe.next(0)  # only what is already there
            if more is None:
                break
            if not isinstance(more, JetStreamDelivery):
                self._held = more
                break
            delivery = more
        if current:
            responses.append((current, window.messages, window.bytes))
        return Burst(responses)

    async def _reconcile(self) -> None:
        """Free deliveries at or below the consumer's ack floor (acked anywhere)."""
        try:
            info = await self.js.consumer_info(self.stream, self.consumer)
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
