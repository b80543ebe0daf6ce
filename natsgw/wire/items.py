"""Batch items as handlers read them: the upb message itself or its dataclass, one shape.

A ``PublishBatch`` of 1000 messages spent half the gateway's CPU turning each item into a
betterproto2 dataclass the handler reads four fields of once. So the codec leaves the items of
the classes in :data:`UPB_ITEMS` as the upb messages it parsed (bounded and checked exactly as
before, see natsgw.wire.codec); calls driven in process still pass dataclasses. Handlers annotate
items with these Protocols, which both satisfy, and read ``item.subject`` either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from natsgw._generated.isa import nats as pb


class _Item(Protocol):
    """What every batch item carries."""

    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


class BatchItem(_Item, Protocol):
    """One message of a ``PublishBatchRequest`` (``NATSMessage``, dataclass ``NatsMessage``)."""

    @property
    def reply_to(self) -> str: ...


class StreamItem(_Item, Protocol):
    """One message of a ``PublishToStreamBatchRequest`` (``StreamMessage``)."""

    @property
    def msg_id(self) -> str: ...


#: Item classes the codec hands over as upb messages when they arrive in a repeated field.
UPB_ITEMS: tuple[type, ...] = (pb.NatsMessage, pb.StreamMessage)
