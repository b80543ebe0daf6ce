"""Object payloads above SPLICE_ABOVE bypass upb (natsgw.wire.codec): decoded as a view into the
request, encoded as the last field. Same meaning as upb's bytes, same refusals (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgw._generated import nats_service_pb2 as upb
from natsgw._generated.isa import nats as pb
from natsgw.errors import InvalidArgument, UndecodableRequest
from natsgw.server import build_codec
from natsgw.wire import codec as codec_module
from natsgw.wire.codec import RepeatedLimits, _split_field

codec = build_codec(64 * 1024 * 1024, RepeatedLimits(headers=3))
bridge = codec.bridge
SMALL = 64  # SPLICE_ABOVE for the property tests: hypothesis makes small payloads
metadata = st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)


@given(st.text(max_size=10), st.binary(min_size=SMALL + 1, max_size=300), metadata)
def test_spliced_decode_means_what_upb_decodes(
    name: str, data: bytes, meta: dict[str, str]
) -> None:
    raw = upb.ObjectPutRequest(
        user_id="u", bucket="b", object_name=name, data=data, metadata=meta
    ).SerializeToString()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec_module, "SPLICE_ABOVE", SMALL)
        message = codec.decode(raw, pb.ObjectPutRequest)
    assert isinstance(message.data, memoryview) and message.data.readonly
    assert bytes(message.data) == data
    assert (message.user_id, message.bucket, message.object_name) == ("u", "b", name)
    assert message.metadata == meta


@given(st.binary(min_size=SMALL + 1, max_size=300), metadata)
def test_spliced_encode_parses_back_with_upb(data: bytes, meta: dict[str, str]) -> None:
    response = pb.ObjectGetResponse(found=True, data=data, metadata=meta)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec_module, "SPLICE_ABOVE", SMALL)
        raw = codec.encode(response, pb.ObjectGetResponse)
    parsed = upb.ObjectGetResponse.FromString(raw)
    assert (parsed.found, parsed.data, dict(parsed.metadata)) == (True, data, meta)
    assert raw.endswith(data)  # appended once, not copied through upb


def test_large_object_payloads_take_the_spliced_paths() -> None:
    data = b"\x01" * (codec_module.SPLICE_ABOVE + 1)
    raw = upb.ObjectPutRequest(bucket="b", object_name="o", data=data).SerializeToString()
    decoded = codec.decode(raw, pb.ObjectPutRequest)
    assert isinstance(decoded.data, memoryview) and decoded.data == data
    chunk = codec.decode(upb.ObjectPutStreamRequest(chunk=data).SerializeToString(),
                         pb.ObjectPutStreamRequest)  # fmt: skip
    assert isinstance(chunk.chunk, memoryview) and chunk.chunk == data
    small = codec.decode(upb.ObjectPutRequest(data=b"x").SerializeToString(), pb.ObjectPutRequest)
    assert small.data == b"x" and isinstance(small.data, bytes)
    encoded = codec.encode(pb.ObjectGetStreamResponse(chunk=data), pb.ObjectGetStreamResponse)
    assert upb.ObjectGetStreamResponse.FromString(encoded).chunk == data


def test_the_rest_of_a_spliced_request_is_bounded_and_refused_as_before() -> None:
    data = b"\x01" * (codec_module.SPLICE_ABOVE + 1)
    over = upb.ObjectPutRequest(data=data, metadata={"a": "", "b": "", "c": "", "d": ""})
    with pytest.raises(InvalidArgument, match=r"ObjectPutRequest\.metadata: 4 items"):
        codec.decode(over.SerializeToString(), pb.ObjectPutRequest)
    truncated = upb.ObjectPutRequest(bucket="b", data=data).SerializeToString()[:-1]
    with pytest.raises(UndecodableRequest, match="ObjectPutRequest"):
        codec.decode(truncated, pb.ObjectPutRequest)


def test_split_field_takes_the_last_occurrence_and_gives_up_on_garbage() -> None:
    twice = b"\x2a\x01a" + b"\x0a\x01u" + b"\x2a\x02bc"  # field 5 twice, field 1 between
    start, end, rest = _split_field(twice, 5) or (0, 0, b"")
    assert twice[start:end] == b"bc"
    assert rest == b"\x0a\x01u"
    assert upb.ObjectPutRequest.FromString(twice).data == b"bc"  # upb agrees
    assert _split_field(b"\x0a\x01u", 5) is None  # absent
    assert _split_field(b"\x2a\x05ab", 5) is None  # truncated
    assert _split_field(b"\x0f", 5) is None  # wire type 7
    assert _split_field(b"\x08\x01" * 5000 + b"\x2a\x01a", 5) is None  # too many fields: upb


def test_answers_a_client_decodes_stay_bytes() -> None:
    data = b"\x01" * (codec_module.SPLICE_ABOVE + 1)
    raw = codec.encode(pb.ObjectGetResponse(found=True, data=data), pb.ObjectGetResponse)
    decoded = codec.decode(raw, pb.ObjectGetResponse)
    assert isinstance(decoded.data, bytes) and decoded.data == data
