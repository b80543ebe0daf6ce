"""The codec's request bounds and its rate-limited log of undecodable requests (pure)."""

from __future__ import annotations

import time

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from natsgw._generated import nats_service_pb2 as upb
from natsgw._generated.isa import nats as pb
from natsgw.errors import InvalidArgument, UndecodableRequest
from natsgw.pipeline.rejects import RejectLog
from natsgw.server import build_codec
from natsgw.wire.codec import RepeatedLimits, _first_over_limit, _scan

codec = build_codec(1024 * 1024, RepeatedLimits(batch_messages=5, headers=2))


@given(
    st.lists(st.text(max_size=200), max_size=20),
    st.text(max_size=5),
    st.integers(0, 21),
    st.integers(0, 2**63 - 1),
)
def test_wire_scan_counts_what_upb_sees(
    tokens: list[str], user: str, limit: int, delay_ns: int
) -> None:
    request = upb.AckMessagesRequest(user_id=user, ack_tokens=tokens)
    request.nak_delay.FromNanoseconds(delay_ns)  # a nested message among the counted fields
    over = _first_over_limit(request.SerializeToString(), {3: limit})
    assert over == (3 if len(tokens) > limit else None)


def test_wire_scan_walks_a_bounded_number_of_fields() -> None:
    """Millions of repetitions of a singular field are not walked one by one in Python: the scan
    gives up after its budget, upb overwrites the field, and the count is checked after it."""
    bomb = b"\x0a\x00" * 2_000_000 + b"\x1a\x00" * 10  # user_id 2M times, then 10 tokens
    started = time.perf_counter()
    assert _first_over_limit(bomb, {3: 5}) is None
    tight = build_codec(8 * 1024 * 1024, RepeatedLimits(ack_tokens=5))
    with pytest.raises(InvalidArgument, match="10 items is above the limit of 5"):
        tight.decode(bomb, pb.AckMessagesRequest)
    assert time.perf_counter() - started < 0.5


def test_wire_scan_stops_at_garbage() -> None:
    assert _first_over_limit(b"\xff\xff\xff", {1: 0}) is None
    assert _first_over_limit(b"\x1a\x05ab", {3: 0}) is None  # truncated: upb will say so


def test_large_batch_refused_by_prescan_and_small_one_after_parse() -> None:
    big = upb.PublishBatchRequest(messages=[upb.NATSMessage(data=b"x" * 20_000)] * 6)
    with pytest.raises(InvalidArgument, match="NATSGW_MAX_BATCH_MESSAGES"):
        codec.decode(big.SerializeToString(), pb.PublishBatchRequest)
    small = upb.PublishBatchRequest(messages=[upb.NATSMessage()] * 6)
    with pytest.raises(InvalidArgument, match="6 items is above the limit of 5"):
        codec.decode(small.SerializeToString(), pb.PublishBatchRequest)
    legal = upb.PublishBatchRequest(messages=[upb.NATSMessage()] * 5)
    assert len(codec.decode(legal.SerializeToString(), pb.PublishBatchRequest).messages) == 5


def test_nested_maps_are_bounded() -> None:
    request = upb.PublishBatchRequest(
        messages=[upb.NATSMessage(headers={"a": "", "b": "", "c": ""})]
    )
    with pytest.raises(InvalidArgument, match=r"NATSMessage\.headers: 3 items"):
        codec.decode(request.SerializeToString(), pb.PublishBatchRequest)


def test_garbage_is_undecodable_request() -> None:
    with pytest.raises(UndecodableRequest, match="request is not a valid PublishRequest"):
        codec.decode(b"\xff\xff\xff\xff\x0f", pb.PublishRequest)


def test_reject_log_once_per_host_and_interval() -> None:
    now = [0.0]
    reject = RejectLog(interval=60.0, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        reject("PublishRequest", "10.0.0.1:1")
        reject("PublishRequest", "10.0.0.1:2")  # same host, other port: suppressed
        reject("PublishRequest", "10.0.0.2:1")  # another host: logged
        now[0] = 61.0
        reject("PublishRequest", "10.0.0.1:3")  # interval over: logged, with the count suppressed
        reject("PublishRequest", "10.0.0.1:4")
    assert [(e["peer"], e["suppressed"]) for e in logs] == [
        ("10.0.0.1", 0),
        ("10.0.0.2", 0),
        ("10.0.0.1", 1),
    ]


@given(
    st.lists(
        st.tuples(
            st.binary(max_size=300),
            st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
        ),
        max_size=12,
    ),
    st.integers(0, 13),
)
def test_wire_scan_reports_the_longest_item(
    items: list[tuple[bytes, dict[str, str]]], limit: int
) -> None:
    """What lets the codec skip reading each item's bounds: no item is longer than reported."""
    request = upb.PublishBatchRequest(
        user_id="u", messages=[upb.NATSMessage(data=d, headers=h) for d, h in items]
    )
    over, longest = _scan(request.SerializeToString(), {3: limit})
    if len(items) > limit:
        assert (over, longest) == (3, None)
    else:
        sizes = [m.ByteSize() for m in request.messages]
        assert (over, longest) == (None, max(sizes, default=0))


#: Enough 150-byte items to make a request the codec pre-scans (above 64 KiB).
_PRESCANNED = 450


def test_prescanned_batches_still_refuse_each_items_bounds_and_bad_timestamps() -> None:
    """Items the pre-scan measured too short to hold more than 100 headers (< 202 bytes) skip
    reading their header count; a longer one and every timestamp are still checked, with the
    same refusals as an unscanned request."""
    wide = build_codec(8 * 1024 * 1024, RepeatedLimits(batch_messages=1000, headers=100))
    filler = [upb.NATSMessage(subject="a", data=b"x" * 150)] * _PRESCANNED
    many_headers = upb.NATSMessage(headers={f"h{i}": "" for i in range(101)})
    for position in (0, _PRESCANNED // 2, _PRESCANNED):
        items = list(filler)
        items.insert(position, many_headers)
        raw = upb.PublishBatchRequest(messages=items).SerializeToString()
        assert len(raw) > 64 * 1024
        with pytest.raises(InvalidArgument, match=r"NATSMessage\.headers: 101 items"):
            wide.decode(raw, pb.PublishBatchRequest)
    bad = upb.PublishBatchRequest(messages=filler)
    bad.messages[_PRESCANNED - 1].timestamp.seconds = 253402300800 * 10
    assert max(m.ByteSize() for m in bad.messages) < 202  # the short path
    with pytest.raises(UndecodableRequest, match="PublishBatchRequest"):
        wide.decode(bad.SerializeToString(), pb.PublishBatchRequest)
    edge = upb.NATSMessage(headers={f"h{i}": "" for i in range(100)})
    good = upb.PublishBatchRequest(messages=[*filler, edge])
    decoded = wide.decode(good.SerializeToString(), pb.PublishBatchRequest)
    assert len(decoded.messages) == _PRESCANNED + 1
    assert len(decoded.messages[-1].headers) == 100
