"""Batch items stay upb messages through the codec (natsgw.wire.items) and behave as before."""

from __future__ import annotations

import pytest

from natsgw._generated import nats_service_pb2 as upb
from natsgw._generated.isa import nats as pb
from natsgw._generated.message_pool import default_message_pool
from natsgw.errors import InvalidArgument, UndecodableRequest
from natsgw.ops import tracing
from natsgw.server import build_codec
from natsgw.wire.codec import RepeatedLimits, UpbBridge

codec = build_codec(1024 * 1024, RepeatedLimits(batch_messages=5, headers=2))

PUBLISH = upb.PublishBatchRequest(
    user_id="u",
    messages=[
        upb.NATSMessage(subject="a.b", data=b"1", headers={"k": "v"}, reply_to="r"),
        upb.NATSMessage(subject="a.c", data=b"2"),
    ],
)
STREAM = upb.PublishToStreamBatchRequest(
    stream_name="s",
    messages=[upb.StreamMessage(subject="a.b", data=b"1", headers={"k": "v"}, msg_id="m")],
)


def _dataclass_bridge() -> UpbBridge:
    """The bridge as it was: every item becomes a dataclass."""
    bridge = UpbBridge(upb, default_message_pool, RepeatedLimits(batch_messages=5, headers=2))
    bridge.register(pb.PublishBatchRequest)
    bridge.register(pb.PublishToStreamBatchRequest)
    return bridge


@pytest.mark.parametrize(
    ("request_", "cls", "fields"),
    [
        (PUBLISH, pb.PublishBatchRequest, ("subject", "data", "headers", "reply_to")),
        (STREAM, pb.PublishToStreamBatchRequest, ("subject", "data", "headers", "msg_id")),
    ],
)
def test_items_are_upb_messages_that_read_like_the_dataclasses(
    request_: object, cls: type, fields: tuple[str, ...]
) -> None:
    raw = request_.SerializeToString()  # type: ignore[attr-defined]
    fast = codec.decode(raw, cls)
    plain = _dataclass_bridge().decode(raw, cls)
    assert isinstance(fast.messages, list)
    assert fast.messages and not any(isinstance(m, pb.NatsMessage) for m in fast.messages)
    assert not any(isinstance(m, pb.StreamMessage) for m in fast.messages)
    for item, expected in zip(fast.messages, plain.messages, strict=True):
        for name in fields:
            value = getattr(item, name)
            assert (dict(value) if name == "headers" else value) == getattr(expected, name)
    # Either kind of item encodes to the same bytes (a dataclass-built request too).
    assert codec.encode(fast, cls) == raw
    assert codec.encode(plain, cls) == raw


def test_item_bounds_and_refusals_are_unchanged() -> None:
    over = upb.PublishToStreamBatchRequest(
        messages=[upb.StreamMessage(), upb.StreamMessage(headers={"a": "", "b": "", "c": ""})]
    )
    for bridge in (codec.bridge, _dataclass_bridge()):
        assert bridge is not None
        with pytest.raises(InvalidArgument) as caught:
            bridge.decode(over.SerializeToString(), pb.PublishToStreamBatchRequest)
        assert str(caught.value) == (
            "StreamMessage.headers: 3 items is above the limit of 2 (NATSGW_MAX_HEADERS); "
            "send fewer per call"
        )
    # A timestamp no datetime can hold was undecodable as a dataclass, and still is.
    bad = upb.PublishBatchRequest(messages=[upb.NATSMessage(subject="a")])
    bad.messages[0].timestamp.seconds = 253402300800 * 10
    with pytest.raises(UndecodableRequest, match="PublishBatchRequest"):
        codec.decode(bad.SerializeToString(), pb.PublishBatchRequest)


def test_trace_headers_are_stamped_on_upb_items() -> None:
    own = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    request = upb.PublishBatchRequest(
        messages=[upb.NATSMessage(subject="a"), upb.NATSMessage(headers={"traceparent": own})]
    )
    decoded = codec.decode(request.SerializeToString(), pb.PublishBatchRequest)
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    tracing.stamp(decoded, {"traceparent": parent})
    assert dict(decoded.messages[0].headers) == {"traceparent": parent}
    assert dict(decoded.messages[1].headers) == {"traceparent": own}  # its own one wins
