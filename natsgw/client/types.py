"""What the client hands back: small frozen records, plus the generated messages it re-exports.

Info-shaped answers (stream, consumer, bucket, object descriptions) are the generated
betterproto2 dataclasses themselves, re-exported here so callers never import
``natsgw._generated``; deliveries get records of their own because they carry behaviour (acks).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Protocol

from natsgw._generated.isa.nats import (
    AckAction,
    AckPolicy,
    BucketStorage,
    ConsumerConfig,
    ConsumerInfo,
    DeliveryPolicy,
    DiscardPolicy,
    JetStreamMessage,
    KvBucketInfo,
    KvEntry,
    KvOperation,
    NatsHealthCheckResponse,
    ObjectInfo,
    ReplayPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)


class _Settler(Protocol):
    """What settles a consumed message (the consumer's ack batcher), seen from the message."""

    def settle(self, msg: JsMsg, action: AckAction, delay: datetime.timedelta | None) -> None: ...


__all__ = [
    "AckAction",
    "AckPolicy",
    "BatchResult",
    "BucketStorage",
    "ConsumerConfig",
    "ConsumerInfo",
    "DeliveryPolicy",
    "DiscardPolicy",
    "Health",
    "JsMsg",
    "KvBucketInfo",
    "KvEntry",
    "KvOperation",
    "Msg",
    "ObjectInfo",
    "PubAck",
    "ReplayPolicy",
    "Reply",
    "RetentionPolicy",
    "StorageType",
    "StreamConfig",
    "StreamInfo",
]

Health = NatsHealthCheckResponse


@dataclass(frozen=True, slots=True)
class Msg:
    """A core NATS message delivered by ``subscribe``; subjects are as the tenant names them."""

    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    #: Where to answer (``client.publish(msg.reply_to, ...)``); empty when there is nowhere.
    reply_to: str = ""
    #: Counts every message NATS delivered to the subscription: a gap shows a dropped message.
    sequence: int = 0
    timestamp: datetime.datetime | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to ``request``."""

    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``publish_batch`` did: ``errors`` name each refused message by index and reason."""

    published: int
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True, slots=True)
class PubAck:
    """JetStream's receipt for a stored message."""

    sequence: int
    #: NATS dropped it as a repeat of an earlier ``msg_id``; ``sequence`` is the original's.
    duplicate: bool = False
    timestamp: datetime.datetime | None = None
    #: Why it was not stored (only in ``publish_to_stream_batch`` results; empty when stored).
    error: str = ""


@dataclass(slots=True, eq=False)
class JsMsg:
    """A JetStream delivery. From ``consume`` its ack methods only queue: acks go out batched."""

    subject: str
    data: bytes
    headers: dict[str, str]
    #: The stream's sequence of the message.
    sequence: int
    consumer_sequence: int
    num_delivered: int
    num_pending: int
    timestamp: datetime.datetime | None
    ack_token: str
    _batcher: _Settler | None = field(default=None, repr=False)

    @classmethod
    def from_wire(cls, m: JetStreamMessage, settler: _Settler | None = None) -> JsMsg:
        """The delivery as the gateway sent it; ``settler`` batches its acks (``consume``)."""
        return cls(
            subject=m.subject,
            data=m.data,
            headers=dict(m.headers),
            sequence=m.sequence,
            consumer_sequence=m.consumer_sequence,
            num_delivered=m.num_delivered,
            num_pending=m.num_pending,
            timestamp=m.timestamp,
            ack_token=m.ack_token,
            _batcher=settler,
        )

    def ack(self) -> None:
        """Done with it. Queued; the consumer sends it within its ack interval."""
        self._queue(AckAction.ACK)

    def nak(self, delay: datetime.timedelta | None = None) -> None:
        """Redeliver it (no earlier than ``delay``)."""
        self._queue(AckAction.NAK, delay)

    def term(self) -> None:
        """Never redeliver it."""
        self._queue(AckAction.TERMINATE)

    def _queue(self, action: AckAction, delay: datetime.timedelta | None = None) -> None:
        if self._batcher is None:
            raise RuntimeError(
                "this message was pulled, not consumed: acknowledge it with "
                "await client.ack(msg) (or consume() to have acks batched for you)"
            )
        self._batcher.settle(self, action, delay)
