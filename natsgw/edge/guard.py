"""The per-connection guard between the event loop and grpclib's HTTP/2 protocol.

Every connection the gRPC listener accepts goes through :class:`GuardedConnection`
(natsgw.compat.grpclib.guard_connections), which

- refuses it beyond the connection caps (:class:`~natsgw.edge.limits.ConnectionLimits`):
  accepted and closed at once, before any HTTP/2 byte;
- counts stream resets, PINGs and SETTINGS per second (:class:`~natsgw.edge.budget.RateBudget`):
  one over the budget and the client gets GOAWAY ENHANCE_YOUR_CALM and the connection closes;
- closes a connection whose answers wait for a flow-control window it has not opened (nothing
  sent on it) for the write-stall timeout: with small windows, unread answers stay in the
  handlers, not the transport, and pin memory just the same;
- stops reading from a client while its answers cannot be written (it does not read), closes
  it when more than the outbound budget waits for it or nothing could be written for the
  write-stall timeout, and drops everything buffered for it when it goes away;
- closes with GOAWAY NO_ERROR a connection that carried no admitted call (one past identity)
  within the handshake timeout, however many refused requests it sent,
  or had no call in progress for the idle timeout (one sweep per gateway, not a timer each).

Nothing is allocated or logged per frame: a counted control frame is one int added.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpclib.protocol
import grpclib.server
import structlog
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from natsgw.compat import grpclib as grpclib_compat
from natsgw.compat import h2 as h2_compat
from natsgw.compat.grpclib import ProtocolFactory
from natsgw.config import Settings
from natsgw.edge.budget import RateBudget
from natsgw.edge.limits import ConnectionLimits, peer_key

log = structlog.get_logger("natsgw.edge")

#: File descriptors kept for everything but gRPC connections (NATS, HTTP side, files, logs).
FD_RESERVE = 128
#: After a GOAWAY, how long a connection gets to take it before it is cut.
GOAWAY_GRACE = 1.0
#: At most one log line per this many seconds about connections the edge closed.
_LOG_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class EdgePolicy:
    """The edge's limits (Settings ``edge_*``); 0 turns one off."""

    max_connections: int = 4096
    max_connections_per_peer: int = 256
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    resets_per_second: int = 200
    pings_per_second: int = 100
    settings_per_second: int = 20
    outbound_buffer_bytes: int = 16 * 1024 * 1024
    write_stall_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, fd_limit: int = 0) -> EdgePolicy:
        """The settings' policy, its total cap kept ``FD_RESERVE`` below ``fd_limit``."""
        total = settings.edge_max_connections
        if fd_limit > 0:
            room = max(16, fd_limit - FD_RESERVE)
            total = min(total, room) if total else room
        return cls(
            max_connections=total,
            max_connections_per_peer=settings.edge_max_connections_per_peer,
            handshake_timeout=settings.edge_handshake_timeout,
            idle_timeout=settings.edge_idle_timeout,
            resets_per_second=settings.edge_resets_per_second,
            pings_per_second=settings.edge_pings_per_second,
            settings_per_second=settings.edge_settings_per_second,
            outbound_buffer_bytes=settings.edge_outbound_buffer_bytes,
            write_stall_timeout=settings.edge_write_stall_timeout,
        )

    @property
    def sweep_interval(self) -> float:
        """How often timeouts are checked: a quarter of the shortest, at most a second."""
        timeouts = [
            t
            for t in (self.handshake_timeout, self.idle_timeout, self.write_stall_timeout)
            if t > 0
        ]
        return max(0.05, min([1.0, *(t / 4 for t in timeouts)]))


class Edge:
    """Owns the guarded connections of one gRPC listener, their caps and the timeout sweep."""

    def __init__(self, policy: EdgePolicy, on_closed: Callable[[], None] | None = None) -> None:
        self.policy = policy
        #: Called when a connection the edge closed, or whose answers waited for it, is gone:
        #: what its calls held is garbage now (the gateway trims the heap).
        self.on_closed = on_closed
        self.limits = ConnectionLimits(policy.max_connections, policy.max_connections_per_peer)
        self.connections: set[GuardedConnection] = set()
        #: The guard of each grpclib connection, to mark it when a call on it is admitted.
        self.by_grpclib: weakref.WeakKeyDictionary[Any, GuardedConnection] = (
            weakref.WeakKeyDictionary()
        )
        #: Connections the edge refused or closed, by reason (for tests, logs and metrics).
        self.closed: Counter[str] = Counter()
        self._sweeping: asyncio.Task[None] | None = None
        self._unlogged: Counter[str] = Counter()
        self._log_at = 0.0

    def protocol(self, factory: ProtocolFactory) -> asyncio.Protocol:
        """The protocol for one new connection (natsgw.compat.grpclib.guard_connections)."""
        return GuardedConnection(self, factory)

    def admitted(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        """A call on ``stream`` got past identity: its connection is no longer anonymous."""
        guard = self.by_grpclib.get(grpclib_compat.stream_connection(stream))
        if guard is not None:
            guard.admitted = True

    def start(self) -> None:
        self._sweeping = asyncio.create_task(self._sweep(), name="natsgw-edge-sweep")

    async def close(self) -> None:
        sweeping, self._sweeping = self._sweeping, None
        if sweeping is not None:
            sweeping.cancel()
            await asyncio.gather(sweeping, return_exceptions=True)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.policy.sweep_interval
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self.connections):
                connection.check(now)

    def count_close(self, reason: str, peer: str) -> None:
        """Count (and now and then log) a connection the edge refused or closed."""
        self.closed[reason] += 1
        self._unlogged[reason] += 1
        now = time.monotonic()
        if now >= self._log_at:
            self._log_at = now + _LOG_EVERY
            log.warning(
                "edge_closed_connections",
                last_peer=peer[:64],
                last_reason=reason,
                since_last_log=dict(self._unlogged),
                open_connections=self.limits.open,
            )
            self._unlogged.clear()


class GuardedConnection(asyncio.Protocol):
    """One client connection: grpclib's protocol behind the edge's caps, budgets and timeouts."""

    __slots__ = (
        "_abort_at",
        "_blocked",
        "_edge",
        "_factory",
        "_idle_since",
        "_inner",
        "_loop",
        "_made_at",
        "_paused_since",
        "_peer",
        "_pings",
        "_resets",
        "_settings",
        "_transport",
        "admitted",
        "closing",
    )

    def __init__(self, edge: Edge, factory: ProtocolFactory) -> None:
        self._edge = edge
        self._factory = factory
        self._inner: grpclib.protocol.H2Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._loop = asyncio.get_running_loop()
        self._made_at = 0.0
        #: A call on this connection got past identity (natsgw.pipeline). Until then the
        #: handshake timeout applies, however many refused requests the connection sent: a
        #: connection that never authenticates must not hold a connection slot for the idle
        #: timeout.
        self.admitted = False
        self._idle_since: float | None = None
        self._paused_since: float | None = None
        self._abort_at: asyncio.TimerHandle | None = None
        #: Streams whose answer waits for flow-control window: stream id -> (DATA bytes sent
        #: on it, since when, in sweep time, that count has not grown).
        self._blocked: dict[int, tuple[int, float]] = {}
        policy = edge.policy
        self._resets = RateBudget(policy.resets_per_second)
        self._pings = RateBudget(policy.pings_per_second)
        self._settings = RateBudget(policy.settings_per_second)
        #: No more requests are taken: a GOAWAY is out, or the connection is being cut.
        self.closing = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = peer_key(transport.get_extra_info("peername"))
        refused = self._edge.limits.admit(peer)
        if refused is not None:
            # Accepted and closed at once, before any HTTP/2 byte: grpc clients count a
            # connection that ends before the server's SETTINGS as a failed attempt and back
            # off (UNAVAILABLE); a GOAWAY after SETTINGS would make them reconnect at once.
            self.closing = True
            transport.abort()
            self._edge.count_close("refused", peer)
            return
        self._peer = peer
        self._made_at = self._loop.time()
        inner = self._inner = self._factory()
        inner.connection_made(transport)
        h2_compat.limit_closed_streams(grpclib_compat.h2_connection(inner))
        grpclib_compat.intercept_events(
            inner,
            on_request=self._on_request,
            on_reset=self._on_reset,
            on_ping=self._on_ping,
            on_settings=self._on_settings,
        )
        self._edge.connections.add(self)
        self._edge.by_grpclib[grpclib_compat.grpclib_connection(inner)] = self

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            return
        inner.data_received(data)
        if self._paused_since is not None:
            self._check_buffered()

    def eof_received(self) -> bool | None:
        # HTTP/2 clients do not half-close: the client is gone, and what waits for it goes too.
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size():
            self._cut("client_gone")
        return None

    def pause_writing(self) -> None:
        # The client does not read what it is sent: stop reading what it sends (its PINGs and
        # SETTINGS would each add an acknowledgement to the answers it does not take).
        self._paused_since = self._loop.time()
        if self._transport is not None:
            self._transport.pause_reading()
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._paused_since = None
        if self._transport is not None and not self.closing:
            self._transport.resume_reading()
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._edge.connections.discard(self)
        if self._peer is not None:
            self._edge.limits.release(self._peer)
            self._peer = None
        if self._abort_at is not None:
            self._abort_at.cancel()
            self._abort_at = None
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)  # grpclib cancels the connection's calls
            grpclib_compat.forget_calls_when_done(inner)
            heavy = self.closing or self._paused_since is not None
            if heavy and self._edge.on_closed is not None:
                self._edge.on_closed()

    # -- event hooks (natsgw.compat.grpclib.intercept_events) ----------------------------------

    def _on_request(self, event: Any) -> bool:
        # The rest of a flood's batch after the GOAWAY starts no handler.
        return not self.closing

    def _on_reset(self, event: Any) -> bool:
        if not self._resets.take(self._loop.time()):
            self._calm("too_many_resets")
        return True  # grpclib must still cancel the stream's handler

    def _on_ping(self, event: Any) -> bool:
        if not self._pings.take(self._loop.time()):
            self._calm("too_many_pings")  # what grpc clients recognise (they ping less)
        return True

    def _on_settings(self, event: Any) -> bool:
        if not self._settings.take(self._loop.time()):
            self._calm("too_many_settings")
        return True

    # -- ending a connection -------------------------------------------------------------------

    def _calm(self, why: str) -> None:
        self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, why)

    def goaway(self, code: ErrorCodes, why: str) -> None:
        """Send GOAWAY(``code``, debug data ``why``), close, and cut after a short grace."""
        inner, transport = self._inner, self._transport
        if self.closing or inner is None or transport is None:
            return
        self.closing = True
        self._edge.count_close(why, self._peer or "")
        with contextlib.suppress(ProtocolError):
            grpclib_compat.h2_connection(inner).close_connection(
                error_code=code, additional_data=why.encode()
            )
        inner.connection.flush()
        inner.connection.close()  # grpclib's: closes the transport once it has written
        if transport.get_write_buffer_size() > self._edge.policy.outbound_buffer_bytes:
            transport.abort()
        else:
            self._abort_at = self._loop.call_later(GOAWAY_GRACE, transport.abort)

    def _cut(self, why: str) -> None:
        """Close at once, dropping whatever waits to be written."""
        if not self.closing:
            self.closing = True
            self._edge.count_close(why, self._peer or "")
        if self._transport is not None:
            self._transport.abort()

    def _check_buffered(self) -> None:
        transport = self._transport
        limit = self._edge.policy.outbound_buffer_bytes
        if transport is not None and limit and transport.get_write_buffer_size() > limit:
            self._cut("outbound_budget")

    def _window_stalled(self, now: float, inner: grpclib.protocol.H2Protocol, stall: float) -> bool:
        """An answer has waited for a window the client does not open, nothing sent on its
        stream, for ``stall`` seconds. A client that reads, however slowly, opens windows and
        so gets bytes sent: that stream's clock starts again at each sweep that sees them."""
        blocked = h2_compat.blocked_streams(grpclib_compat.h2_connection(inner))
        if not blocked:
            if self._blocked:
                self._blocked = {}
            return False
        before = self._blocked
        seen: dict[int, tuple[int, float]] = {}
        stalled = False
        for stream_id in blocked:
            sent = grpclib_compat.stream_data_sent(inner, stream_id)
            last = before.get(stream_id)
            since = last[1] if last is not None and last[0] == sent else now
            seen[stream_id] = (sent, since)
            stalled = stalled or now - since >= stall
        self._blocked = seen
        return stalled

    def check(self, now: float) -> None:
        """The sweep's look at this connection: write stall (transport or flow control),
        handshake and idle timeouts."""
        inner = self._inner
        if inner is None or self.closing:
            return
        policy = self._edge.policy
        paused = self._paused_since
        if paused is not None:
            self._check_buffered()
            if policy.write_stall_timeout and now - paused >= policy.write_stall_timeout:
                self._cut("write_stall")
            return
        handshake = policy.handshake_timeout
        if not self.admitted and handshake and now - self._made_at >= handshake:
            self.goaway(ErrorCodes.NO_ERROR, "no_call_admitted_in_time")
            return
        if grpclib_compat.open_calls(inner):
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        elif policy.idle_timeout and now - self._idle_since >= policy.idle_timeout:
            self.goaway(ErrorCodes.NO_ERROR, "idle")
            return
        stall = policy.write_stall_timeout
        if stall and self._window_stalled(now, inner, stall):
            self._cut("flow_control_stall")
