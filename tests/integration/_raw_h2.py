"""A raw HTTP/2 client (the ``h2`` library over asyncio) that sends requests it never finishes.

What an attacker does and no gRPC library will: open gRPC streams, send HEADERS and as much of a
request body as flow control lets through, and then nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

_ZEROS = memoryview(bytes(1024 * 1024))


def grpc_prefix(length: int) -> bytes:
    """The 5-byte gRPC message prefix (uncompressed) of a ``length``-byte message."""
    return struct.pack(">?I", False, length)


@dataclass
class RawH2:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h2.connection.H2Connection
    #: stream id -> (bytes still to send, then this many zero bytes)
    pending: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    #: stream id -> grpc-status (or "reset"), once the gateway answered
    statuses: dict[int, str] = field(default_factory=dict)
    messages: dict[int, str] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.increment_flow_control_window(2**30)
        writer.write(conn.data_to_send())
        self = cls(reader, writer, conn)
        self.task = asyncio.create_task(self._pump())
        return self

    def start(self, path: str, metadata: list[tuple[str, str]], body: bytes, zeros: int = 0) -> int:
        """Open a call to ``path``; send ``body`` then ``zeros`` zero bytes as flow control
        allows, and never end the stream."""
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
            ("te", "trailers"), *metadata,
        ]  # fmt: skip
        self.conn.send_headers(sid, headers)
        self.pending[sid] = (body, zeros)
        self._flush()
        return sid

    def answered(self) -> int:
        return len(self.statuses)

    def _flush(self) -> None:
        for sid, (body, zeros) in list(self.pending.items()):
            try:
                window = self.conn.local_flow_control_window(sid)
            except h2.exceptions.StreamClosedError:
                del self.pending[sid]
                continue
            size = self.conn.max_outbound_frame_size
            while body and window > 0:
                chunk = body[: min(window, size)]
                self.conn.send_data(sid, chunk)
                body, window = body[len(chunk) :], window - len(chunk)
            while not body and zeros and window > 0:
                n = min(window, size, zeros, len(_ZEROS))
                self.conn.send_data(sid, _ZEROS[:n])
                zeros, window = zeros - n, window - n
            if body or zeros:
                self.pending[sid] = (body, zeros)
            else:
                del self.pending[sid]
        self.writer.write(self.conn.data_to_send())

    async def _pump(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    headers = dict(event.headers)
                    status = headers.get(b"grpc-status")
                    if status is not None:
                        self.statuses[event.stream_id] = status.decode()
                        self.messages[event.stream_id] = headers.get(b"grpc-message", b"").decode()
                        self.pending.pop(event.stream_id, None)
                elif isinstance(event, h2.events.StreamReset):
                    self.statuses.setdefault(event.stream_id, "reset")
                    self.pending.pop(event.stream_id, None)
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._flush()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
