"""natsgw.compat.h2: a unary answer's frames built without h2's encoder, read by a real h2 peer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hpack import NeverIndexedHeaderTuple
from hpack.hpack import encode_integer
from hypothesis import given
from hypothesis import strategies as st

from natsgw.compat import h2 as h2_compat

CONTENT_TYPE = "application/grpc+proto"


class Transport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))


def _pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def _request(client: h2.connection.H2Connection, server: h2.connection.H2Connection) -> int:
    sid = client.get_next_available_stream_id()
    client.send_headers(
        sid,
        [(":method", "POST"), (":scheme", "http"), (":path", "/isa.nats.NATSService/KVGet"),
         (":authority", "gw"), ("content-type", CONTENT_TYPE), ("te", "trailers")],
    )  # fmt: skip
    client.send_data(sid, b"\x00\x00\x00\x00\x02ab", end_stream=True)
    server.receive_data(client.data_to_send())
    server.data_to_send()  # window updates the server queued, as grpclib flushes them
    return sid


def _head(request_id: str) -> bytes:
    extra = h2_compat.hpack_literal("grpc-accept-encoding", "gzip,identity")
    block = h2_compat.response_head(CONTENT_TYPE, extra)
    return block + h2_compat.hpack_literal("x-request-id", request_id, never_indexed=True)


def _events(client: h2.connection.H2Connection, data: bytes) -> list[h2.events.Event]:
    return [e for e in client.receive_data(data) if not isinstance(e, h2.events.WindowUpdated)]


def test_the_peer_reads_headers_message_and_ok_trailers() -> None:
    client, server = _pair()
    sid = _request(client, server)
    transport = Transport()
    assert h2_compat.write_answer(server, sid, transport, _head("gw-1"), b"\x00\x00\x00\x00\x01z")
    (written,) = transport.writes
    response, data, trailers, ended = _events(client, written)
    assert isinstance(response, h2.events.ResponseReceived)
    assert response.headers == [
        (b":status", b"200"), (b"content-type", CONTENT_TYPE.encode()),
        (b"grpc-accept-encoding", b"gzip,identity"), (b"x-request-id", b"gw-1"),
    ]  # fmt: skip
    assert isinstance(response.headers[-1], NeverIndexedHeaderTuple)
    assert isinstance(data, h2.events.DataReceived)
    assert data.data == b"\x00\x00\x00\x00\x01z"
    assert isinstance(trailers, h2.events.TrailersReceived)
    assert trailers.headers == [(b"grpc-status", b"0")]
    assert isinstance(ended, h2.events.StreamEnded)
    assert server.streams[sid].closed  # h2 counts it closed, as after its own sends


def test_state_and_windows_match_what_h2_itself_leaves() -> None:
    ours_client, ours = _pair()
    theirs_client, theirs = _pair()
    message = b"\x00\x00\x00\x00\x03abc"
    for _ in range(3):
        sid = _request(ours_client, ours)
        assert h2_compat.write_answer(ours, sid, Transport(), _head("x"), message)
        assert _request(theirs_client, theirs) == sid
        theirs.send_headers(sid, [(":status", "200"), ("content-type", CONTENT_TYPE)])
        theirs.send_data(sid, message)
        theirs.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        theirs.data_to_send()
        assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
        assert ours.streams[sid].outbound_flow_control_window == (
            theirs.streams[sid].outbound_flow_control_window
        )
        assert ours.streams[sid].state_machine.state == theirs.streams[sid].state_machine.state
        assert ours.state_machine.state == theirs.state_machine.state
    assert ours.open_inbound_streams == theirs.open_inbound_streams == 0


def test_h2s_own_encoder_and_ours_interleave_on_one_connection() -> None:
    """h2 indexes what it sends; our blocks must leave both tables as they were."""
    client, server = _pair()
    for i in range(6):
        sid = _request(client, server)
        if i % 2:
            transport = Transport()
            assert h2_compat.write_answer(server, sid, transport, _head(f"id-{i}"), b"m")
            written = transport.writes[0]
        else:
            headers = [(":status", "200"), ("content-type", CONTENT_TYPE)]
            server.send_headers(sid, [*headers, ("x-request-id", f"id-{i}")])
            server.send_data(sid, b"m")
            server.send_headers(sid, [("grpc-status", "0")], end_stream=True)
            written = server.data_to_send()
        response, _, trailers, _ = _events(client, written)
        assert isinstance(response, h2.events.ResponseReceived)
        assert isinstance(trailers, h2.events.TrailersReceived)
        assert dict(response.headers)[b"x-request-id"] == f"id-{i}".encode()
        assert trailers.headers == [(b"grpc-status", b"0")]


def test_a_pending_table_size_update_leaves_the_answer_to_h2() -> None:
    client, server = _pair()
    sid = _request(client, server)
    client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 1024})
    server.receive_data(client.data_to_send())
    server.data_to_send()
    transport = Transport()
    assert not h2_compat.write_answer(server, sid, transport, _head("x"), b"m")
    assert transport.writes == []


def test_a_reset_stream_raises_before_anything_is_written() -> None:
    client, server = _pair()
    sid = _request(client, server)
    client.reset_stream(sid)
    server.receive_data(client.data_to_send())
    transport = Transport()
    with pytest.raises(h2.exceptions.StreamClosedError):
        h2_compat.write_answer(server, sid, transport, _head("x"), b"m")
    assert transport.writes == []


def test_an_answer_beyond_the_window_is_left_to_h2() -> None:
    client, server = _pair()
    sid = _request(client, server)
    transport = Transport()
    too_big = b"x" * (server.local_flow_control_window(sid) + 1)
    assert not h2_compat.write_answer(server, sid, transport, _head("x"), too_big)
    assert transport.writes == [] and server.streams[sid].open


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=8))
def test_hpack_integers_match_hpacks_own(value: int, prefix_bits: int) -> None:
    assert h2_compat.hpack_int(value, prefix_bits) == bytes(encode_integer(value, prefix_bits))


def test_the_only_repr_in_h2_connection_is_the_received_frame_trace() -> None:
    """skip_received_frame_reprs() shadows ``repr`` for the whole module: it must be that one."""
    source = Path(h2.connection.__file__).read_text()
    assert source.count("repr(") == 1
    assert 'self.config.logger.trace("Received frame: %s", repr(frame))' in source


def test_received_frames_still_reach_h2_after_the_reprs_are_skipped() -> None:
    h2_compat.skip_received_frame_reprs()
    client, server = _pair()
    sid = _request(client, server)
    assert server.streams[sid].state_machine.state.name == "HALF_CLOSED_REMOTE"
