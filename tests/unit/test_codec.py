"""The upb bridge must agree byte-for-byte in meaning with the protobuf wire format."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgw._generated import nats_service_pb2 as upb
from natsgw._generated.isa import nats as pb
from natsgw.errors import InvalidArgument
from natsgw.server import build_codec
from natsgw.wire.codec import RepeatedLimits

codec = build_codec(1024)
text = st.text(max_size=20)
data = st.binary(max_size=64)
headers = st.dictionaries(text, text, max_size=3)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
times = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1),
    max_value=datetime.datetime(2200, 1, 1),
    timezones=st.just(datetime.UTC),
)
durations = st.timedeltas(
    min_value=datetime.timedelta(days=-3000), max_value=datetime.timedelta(days=3000)
)

publish_requests = st.builds(
    pb.PublishRequest,
    user_id=text,
    organization_id=text,
    subject=text,
    data=data,
    headers=headers,
    reply_to=text,
    scope=st.sampled_from(list(pb.NamespaceScope)),
)
consumer_configs = st.builds(
    pb.ConsumerConfig,
    name=text,
    durable_name=text,
    filter_subject=text,
    delivery_policy=st.sampled_from(list(pb.DeliveryPolicy)),
    ack_policy=st.sampled_from(list(pb.AckPolicy)),
    ack_wait=st.none() | durations,
    max_deliver=i32,
    replay_policy=st.sampled_from(list(pb.ReplayPolicy)),
    opt_start_seq=i64,
    opt_start_time=st.none() | times,
)
create_consumer = st.builds(
    pb.CreateConsumerRequest, user_id=text, stream_name=text, config=st.none() | consumer_configs
)
pull_responses = st.builds(
    pb.PullMessagesResponse,
    messages=st.lists(
        st.builds(
            pb.JetStreamMessage,
            subject=text,
            data=data,
            headers=headers,
            sequence=i64,
            timestamp=st.none() | times,
            num_delivered=i32,
        ),
        max_size=3,
    ),
)
stream_configs = st.builds(
    pb.StreamConfig,
    name=text,
    subjects=st.lists(text, max_size=3),
    storage=st.sampled_from(list(pb.StorageType)),
    max_msgs=i32,
    max_bytes=i64,
    max_age=st.none() | durations,
)
messages = st.one_of(publish_requests, create_consumer, pull_responses, stream_configs)


@given(messages)
def test_bridge_encoding_parses_back_with_betterproto(message: object) -> None:
    cls = type(message)
    encoded = codec.encode(message, cls)
    assert cls.parse(encoded) == message  # type: ignore[attr-defined]
    assert codec.decode(encoded, cls) == message


@given(st.one_of(publish_requests, pull_responses))
def test_bridge_decodes_betterproto_encoding(message: object) -> None:
    cls = type(message)
    assert codec.decode(bytes(message), cls) == message  # type: ignore[call-overload]


def test_negative_fractional_durations_are_encoded_correctly() -> None:
    request = pb.RequestRequest(subject="x", timeout=datetime.timedelta(seconds=-1.5))
    wire = upb.RequestRequest.FromString(codec.encode(request, pb.RequestRequest))
    assert (wire.timeout.seconds, wire.timeout.nanos) == (-1, -500_000_000)


def test_unknown_fields_are_tolerated() -> None:
    encoded = codec.encode(pb.PublishRequest(subject="a.b"), pb.PublishRequest)
    future_field = b"\xf8\x06\x01"  # field 111, varint 1: from a newer client
    assert codec.decode(encoded + future_field, pb.PublishRequest).subject == "a.b"


def test_absent_timestamps_stay_absent() -> None:
    decoded = codec.decode(b"", pb.MessageResponse)
    assert decoded.timestamp is None and decoded.headers == {}


@given(
    st.datetimes(
        min_value=datetime.datetime(1, 1, 1),
        max_value=datetime.datetime(9999, 12, 31, 23, 59, 59),
        timezones=st.sampled_from(
            [None, datetime.UTC, datetime.timezone(datetime.timedelta(hours=-7, minutes=-30))]
        ),
    )
)
def test_timestamps_encode_as_protobuf_does(moment: datetime.datetime) -> None:
    """The bridge's own datetime -> Timestamp (no calendar.timegm) agrees with protobuf's."""
    ours = upb.KVGetResponse.FromString(
        codec.encode(pb.KvGetResponse(created=moment), pb.KvGetResponse)
    )
    theirs = upb.KVGetResponse()
    theirs.created.FromDatetime(moment)
    assert (ours.created.seconds, ours.created.nanos) == (
        theirs.created.seconds,
        theirs.created.nanos,
    )


def test_constant_answers_are_encoded_once_and_alike() -> None:
    from natsgw.wire.codec import constant

    fresh = build_codec(1024)
    answer = constant(pb.PublishResponse(success=True, message="published"))
    first = fresh.encode(answer, pb.PublishResponse)
    assert fresh.encode(answer, pb.PublishResponse) is first  # reused, not re-encoded
    equal = pb.PublishResponse(success=True, message="published")  # not declared constant
    assert fresh.encode(equal, pb.PublishResponse) == first
    assert upb.PublishResponse.FromString(first).message == "published"


def _registered() -> list[type]:
    assert codec.bridge is not None
    return [cls for cls in vars(pb).values() if isinstance(cls, type) and codec.bridge.knows(cls)]


@given(messages)
def test_compiled_request_conversion_is_to_dataclass(message: object) -> None:
    """decode()'s straight-line converters agree with the generic field-plan walk."""
    bridge = codec.bridge
    assert bridge is not None
    cls = type(message)
    upb_msg = bridge.to_upb(message)
    assert codec.decode(upb_msg.SerializeToString(), cls) == bridge.to_dataclass(cls, upb_msg)


def test_compiled_conversion_of_every_message_type() -> None:
    bridge = codec.bridge
    assert bridge is not None
    classes = _registered()
    assert len(classes) > 90  # every message of the service
    for cls in classes:  # every field at its zero value / absent
        assert codec.decode(b"", cls) == bridge.to_dataclass(cls, bridge._pairs[cls]()), cls


def test_compiled_conversion_refuses_like_to_dataclass() -> None:
    small = build_codec(1024, RepeatedLimits(headers=2))
    bridge = small.bridge
    assert bridge is not None
    request = upb.PublishRequest(subject="a", headers={"a": "1", "b": "2", "c": "3"})
    with pytest.raises(InvalidArgument) as generic:
        bridge.to_dataclass(pb.PublishRequest, request)
    with pytest.raises(InvalidArgument) as compiled:
        small.decode(request.SerializeToString(), pb.PublishRequest)
    assert str(compiled.value) == str(generic.value)
    unknown_enum = upb.PublishRequest(subject="a")
    unknown_enum.MergeFromString(b"\x38\x63")  # scope (field 7) = 99: no such NamespaceScope
    assert small.decode(unknown_enum.SerializeToString(), pb.PublishRequest).scope == 99


@given(st.one_of(messages, st.builds(pb.KvGetResponse, value=data, revision=i64, created=times)))
def test_compiled_answer_building_is_to_upb(message: Any) -> None:
    """encode()'s straight-line builders produce what the generic field-plan walk does."""
    bridge = codec.bridge
    assert bridge is not None
    upb_cls = bridge._pairs[type(message)]
    ours = upb_cls.FromString(codec.encode(message, type(message)))
    assert ours == bridge.to_upb(message)


def test_compiled_building_of_every_message_type() -> None:
    bridge = codec.bridge
    assert bridge is not None
    for cls in _registered():
        message = cls()
        ours = bridge._pairs[cls].FromString(codec.encode(message, cls))
        assert ours == bridge.to_upb(message), cls
