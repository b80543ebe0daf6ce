"""Consume responses encoded straight through upb say exactly what the dataclass route says."""

from __future__ import annotations

import datetime

import pytest

from natsgw._generated import nats_service_pb2 as upb
from natsgw._generated.isa import nats as pb
from natsgw.adapter.types import JetStreamDelivery
from natsgw.server import build_codec
from natsgw.service.consume import ConsumeEncoder
from natsgw.service.jetstream_wire import HIDDEN_HEADERS, clamp32
from natsgw.tenancy import Namespace, Tenant

codec = build_codec(1024 * 1024)
NS = Namespace(Tenant.user("alice"))


def _delivery(
    seq: int, subject: str, headers: dict[str, str], when: datetime.datetime
) -> JetStreamDelivery:
    stream, consumer = NS.stream("orders"), NS.consumer("worker")
    reply = f"$JS.ACK.{stream}.{consumer}.3.{seq}.{seq + 7}.1764521234123456789.{100 - seq}"
    return JetStreamDelivery(
        subject=NS.subject(subject),
        data=f"payload {seq}".encode(),
        headers=headers,
        reply=reply,
        stream=stream,
        consumer=consumer,
        stream_seq=seq,
        consumer_seq=seq + 7,
        num_delivered=3 if seq else 2**40,  # beyond int32: clamped either way
        num_pending=100 - seq,
        timestamp=when,
        nats_size=200,
    )


DELIVERIES = [
    _delivery(
        1, "orders.new", {}, datetime.datetime(2026, 11, 30, 17, 1, 2, 345678, tzinfo=datetime.UTC)
    ),
    _delivery(
        2,
        "orders.new",
        {"k": "v", "Nats-Expected-Stream": "hidden"},
        datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC),  # before 1970
    ),
    _delivery(0, "orders.old", {"x": "y"}, datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)),
]


def _token(delivery: JetStreamDelivery) -> str:
    return f"token-{delivery.stream_seq}"


def _dataclass(delivery: JetStreamDelivery) -> pb.JetStreamMessage:
    """What JetStreamService.present builds (the route PullMessages still takes)."""
    return pb.JetStreamMessage(
        subject=NS.from_subject(delivery.subject) or "",
        data=delivery.data,
        headers={k: v for k, v in delivery.headers.items() if k not in HIDDEN_HEADERS},
        sequence=delivery.stream_seq,
        timestamp=delivery.timestamp,
        num_delivered=clamp32(delivery.num_delivered),
        ack_token=_token(delivery),
        consumer_sequence=delivery.consumer_seq,
        num_pending=delivery.num_pending,
    )


@pytest.mark.parametrize("count", [1, 2, 3])
def test_encoder_matches_the_dataclass_route(count: int) -> None:
    deliveries = DELIVERIES[:count]
    fast = ConsumeEncoder(NS, _token).response((deliveries, 5, 1234))
    shown = [_dataclass(d) for d in deliveries]
    plain = codec.encode(
        pb.ConsumeResponse(
            message=shown[0], batch=shown[1:], outstanding_messages=5, outstanding_bytes=1234
        ),
        pb.ConsumeResponse,
    )
    # Map entries may be written in another order: compare what a client parses.
    assert upb.ConsumeResponse.FromString(fast) == upb.ConsumeResponse.FromString(plain)
    parsed = upb.ConsumeResponse.FromString(fast)
    assert parsed.message.subject == "orders.new"
    assert parsed.message.timestamp.nanos == 345678000
    assert len(parsed.batch) == count - 1
    if count > 1:  # a NATS stream name is never shown
        assert dict(parsed.batch[0].headers) == {"k": "v"}
