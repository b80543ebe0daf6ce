"""grpclib internals the gateway needs: response-header state, compressed request frames,
coalesced response writes, the transports of its connections, ending calls from outside and the
per-connection events the HTTP/2 edge guards (natsgw.edge)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.protocol
import grpclib.server
from grpclib.exceptions import ProtocolError
from grpclib.metadata import encode_metadata
from h2.connection import H2Connection
from h2.events import PingReceived, RemoteSettingsChanged, RequestReceived, StreamReset
from hpack import NeverIndexedHeaderTuple
from multidict import MultiDict

from natsgw.compat import h2 as h2_compat
from natsgw.compat import require

PINNED = "0.4.9"
require("grpclib", PINNED, __name__)

#: Response headers every call's answer carries besides its metadata (:func:`add_response_header`).
_EXTRA_HEADERS: list[tuple[str, str]] = []

#: ``recv_message(stream, codec, message_type)`` as grpclib's server module calls it.
RequestReader = Callable[[Any, Any, Any], Awaitable[Any]]


def initial_metadata_sent(stream: grpclib.server.Stream[Any, Any]) -> bool:
    """Whether the call's response headers are out already.

    Why: streaming handlers send headers early to tell a client its subscription is in place;
    ``Stream.send_initial_metadata()`` raises if they were sent, and only the private
    ``_send_initial_metadata_done`` says so.
    Upstream fix that removes it: a public read-only property on ``grpclib.server.Stream``.
    """
    return bool(stream._send_initial_metadata_done)


def replace_request_reader(reader: RequestReader) -> None:
    """Make grpclib's server read request messages with ``reader``.

    Why: grpclib 0.4.9 raises NotImplementedError on a compressed frame (grpcio clients may send
    ``grpc-encoding: gzip``), and its frame reader is a module function with no hook.
    Upstream fix that removes it: request compression support in grpclib
    (vmagamedov/grpclib#199, proposed in PR #215).
    """
    grpclib.server.recv_message = reader  # type: ignore[attr-defined,assignment]


def add_response_header(name: str, value: str) -> None:
    """Add ``name: value`` to the initial response headers of every call.

    Why: a server that inflates compressed requests must say so in ``grpc-accept-encoding``;
    grpclib writes the initial headers itself, with no way to add transport-level headers (its
    metadata encoder refuses ``grpc-`` names). So ``Stream.send_initial_metadata`` is replaced by
    grpclib 0.4.9's own body plus the header, using its private ``_send_initial_metadata_done``,
    ``_content_type``, ``_dispatch`` and ``_stream`` (once per call: no per-call wrapper).
    Upstream fix that removes it: the same compression support (vmagamedov/grpclib#199).
    """
    extra = (name, value)
    _EXTRA_HEADERS.append(extra)
    _HEAD_BLOCKS.clear()

    async def send_initial_metadata(
        self: grpclib.server.Stream[Any, Any], *, metadata: Any = None
    ) -> None:
        if self._send_initial_metadata_done:
            raise ProtocolError("Initial metadata was already sent")
        headers = [(":status", "200"), ("content-type", self._content_type)]
        (sent,) = await self._dispatch.send_initial_metadata(MultiDict(metadata or ()))
        headers.extend(encode_metadata(sent))
        headers.append(extra)
        await self._stream.send_headers(headers)
        self._send_initial_metadata_done = True

    grpclib.server.Stream.send_initial_metadata = send_initial_metadata  # type: ignore[method-assign]


def cancel_calls_in_flight(server: grpclib.server.Server, error: Exception) -> int:
    """End every call the server is still serving by raising ``error`` inside its handler.

    Why: at the end of the shutdown grace, closing the server would cancel the calls and drop
    their connections (a client sees "connection lost"); grpclib's per-call wrapper can instead
    raise a GRPCError in the handler, which unwinds it and sends that status. The server's
    handlers, their tasks and each stream's wrapper are private (``_handlers``, ``_tasks``).
    Upstream fix that removes it: a public "cancel calls with status" on ``Server.close()``.
    """
    count = 0
    for handler in list(getattr(server, "_handlers", ())):
        for stream in list(getattr(handler, "_tasks", {})):
            wrapper = getattr(stream, "wrapper", None)
            if wrapper is not None:
                wrapper.cancel(error)
                count += 1
    return count


def end_call(stream: grpclib.server.Stream[Any, Any], error: Exception) -> bool:
    """End a server call from outside its task with ``error`` as its status; False if it cannot.

    Why: a streaming call whose credential stops verifying must end UNAUTHENTICATED while its
    handler waits for the next message; grpclib ends calls that way only for deadlines and client
    resets, through the per-call ``Wrapper`` it keeps on the private h2 ``Stream._stream``
    (``wrapper.cancel(error)`` cancels the handler's task and sends ``error``'s status).
    Upstream fix that removes it: a public ``Stream.cancel(error)`` on grpclib's server stream.
    """
    wrapper = getattr(stream._stream, "wrapper", None)
    if wrapper is None:
        return False
    wrapper.cancel(error)
    return True


#: ``send_message(stream, codec, message, message_type, *, end=False)``, as grpclib calls it.
MessageSender = Callable[..., Awaitable[None]]


def replace_message_sender(sender: MessageSender) -> None:
    """Make grpclib's server send response messages with ``sender``.

    Why: grpclib 0.4.9 frames a message as ``prefix + encoded`` (a copy of the whole message) and
    its server module calls that module function directly, with no hook.
    Upstream fix that removes it: sending the 5-byte prefix and the message without joining them.
    """
    grpclib.server.send_message = sender  # type: ignore[attr-defined,assignment]


def cap_outbound_frames(max_frame: int) -> None:
    """Send HTTP/2 DATA frames of at most ``max_frame`` bytes, whatever the peer allows.

    Why: grpc-core clients allow frames of up to 16 MiB, and grpclib sends as large a frame as the
    peer and the flow-control window allow; each frame is copied several times on the way out
    (``BytesIO.read``, hyperframe's serialisation, h2's outbound buffer, the transport's buffer),
    so an 8 MiB response briefly cost four more 8 MiB copies. grpclib reads the limit from the
    h2 connection's ``max_outbound_frame_size`` attribute, which h2 sets from the peer's SETTINGS:
    the h2 connection class grpclib's protocol module instantiates is replaced by one that caps it.
    Upstream fix that removes it: a maximum outbound frame size option in grpclib's Configuration.
    """
    base: type[Any] = getattr(grpclib.protocol, "H2Connection")  # noqa: B009 - not exported

    class CappedH2Connection(base):  # type: ignore[misc]
        @property
        def max_outbound_frame_size(self) -> int:
            return int(self._natsgw_max_outbound)

        @max_outbound_frame_size.setter
        def max_outbound_frame_size(self, value: int) -> None:
            self._natsgw_max_outbound = min(value, max_frame)

    setattr(grpclib.protocol, "H2Connection", CappedH2Connection)  # noqa: B010 - not exported


async def send_data(stream: grpclib.server.Stream[Any, Any], data: bytes) -> None:
    """Write ``data`` — whole length-prefixed gRPC messages, or a slice of them — as HTTP/2 DATA
    on the call's stream; returns when flow control let it through.

    Why: ``Stream.send_message`` writes one message per DATA frame and socket write; a subscriber
    that is behind has hundreds waiting, and one write for all of them is what lets the gateway
    keep up (natsgw.pipeline.streaming). Only the private h2 stream (``Stream._stream``) takes
    raw bytes. The response headers must have been sent (the pipeline does that first).
    Upstream fix that removes it: a ``Stream.send_messages(iterable)`` (or a "more follows"
    hint on ``send_message``) in grpclib.
    """
    await stream._stream.send_data(data)


def count_sent(stream: grpclib.server.Stream[Any, Any], count: int) -> None:
    """Count ``count`` messages written by :func:`send_data` as grpclib counts its own.

    Why: grpclib's per-stream and per-connection counters (channelz-style statistics,
    ``messages_sent`` / ``last_message_sent``) are updated inside ``send_message`` only, on
    private attributes. Upstream fix that removes it: the same ``send_messages`` as above.
    """
    stream._messages_sent += count
    connection = stream._stream.connection
    connection.messages_sent += count
    connection.last_message_sent = time.monotonic()


TransportWrapper = Callable[[asyncio.BaseTransport], asyncio.BaseTransport]


def wrap_transports(server: grpclib.server.Server, wrap: TransportWrapper) -> None:
    """Make every connection ``server`` accepts (from now on) write through ``wrap(transport)``.

    Why: grpclib writes each HTTP/2 frame with its own ``transport.write``; coalescing them
    (natsgw.wire.coalescing) needs the transport its protocol is given, and the protocol factory,
    ``Server._protocol_factory``, is private with no hook. Call before ``Server.start``.
    Upstream fix that removes it: a protocol/transport factory argument on ``grpclib.server.Server``
    (or write coalescing in grpclib's ``Stream``).
    """
    factory = server._protocol_factory

    def protocol_factory() -> grpclib.protocol.H2Protocol:
        protocol = factory()
        made = protocol.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            made(wrap(transport))

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol

    server._protocol_factory = protocol_factory  # type: ignore[method-assign]


_PREFIX = struct.Struct(">?I")
#: Larger messages leave as prefix and message, not joined (natsgw.wire.frames: no extra copy).
_JOIN_BELOW = 64 * 1024

#: Response header blocks by content type: status, content type and the extra headers.
_HEAD_BLOCKS: dict[str, bytes] = {}


def _head_block(content_type: str, metadata: tuple[tuple[str, str], ...]) -> bytes:
    block = _HEAD_BLOCKS.get(content_type)
    if block is None:
        extra = b"".join(h2_compat.hpack_literal(name, value) for name, value in _EXTRA_HEADERS)
        block = _HEAD_BLOCKS[content_type] = h2_compat.response_head(content_type, extra)
    for item in metadata:
        never = isinstance(item, NeverIndexedHeaderTuple)
        block += h2_compat.hpack_literal(item[0], item[1], never_indexed=never)
    return block


async def send_unary_answer(
    stream: grpclib.server.Stream[Any, Any], reply: Any, metadata: tuple[tuple[str, str], ...]
) -> None:
    """Send a unary call's whole answer: headers (with ``metadata``), ``reply`` and OK trailers.

    Why: grpclib sends them in three steps, each dispatching an event, encoding and validating
    its metadata, waiting for the connection and writing its frame; for a small answer that is
    a large part of a unary call's cost (issue 8 point 8). When the answer fits the flow-control
    window and one frame, and nobody listens to grpclib's send events, the three frames leave in
    one socket write (:func:`natsgw.compat.h2.write_answer`, which also skips h2's encoder),
    with grpclib's stream state and counters updated as its own methods would. Otherwise the
    same frames go out one by one, each when flow control lets it. ``metadata`` must be valid
    gRPC metadata (it is not re-checked). Private: ``_codec``, ``_send_type``,
    ``_content_type``, ``_dispatch``, the ``_send_*_done`` flags, ``_messages_sent`` and the h2
    stream ``_stream`` with its connection.
    Upstream fix that removes it: a "send whole unary response" (or write batching) in grpclib.
    """
    if stream._dispatch._listeners or stream._send_initial_metadata_done:
        if not stream._send_initial_metadata_done:  # listeners: grpclib's own steps
            await stream.send_initial_metadata(metadata=metadata)
        await stream.send_message(reply)
        await stream.send_trailing_metadata()
        return
    encoded = stream._codec.encode(reply, stream._send_type)
    h2s = stream._stream
    h2c = h2s._h2_connection
    connection = h2s.connection
    sid = h2s.id
    size = len(encoded) + 5
    if (
        size < _JOIN_BELOW
        and sid is not None
        and connection.write_ready.is_set()
        and h2_compat.write_answer(
            h2c, sid, h2s._transport, _head_block(stream._content_type, metadata),
            _PREFIX.pack(False, len(encoded)) + encoded,
        )
    ):  # fmt: skip
        h2s.data_sent += size
        connection.data_sent += size
        connection.data_send_process()  # what headers_send_process does, and more
        stream._send_initial_metadata_done = True
        _count_message(stream)
        stream._send_trailing_metadata_done = True
        return
    headers = [(":status", "200"), ("content-type", stream._content_type)]
    headers += _EXTRA_HEADERS
    headers += metadata
    await h2s.send_headers(headers)
    stream._send_initial_metadata_done = True
    prefix = _PREFIX.pack(False, len(encoded))
    if size < _JOIN_BELOW:
        await h2s.send_data(prefix + encoded)
    else:
        await h2s.send_data(prefix)
        await h2s.send_data(encoded)
    _count_message(stream)
    await stream.send_trailing_metadata()


def _count_message(stream: grpclib.server.Stream[Any, Any]) -> None:
    """What grpclib's ``Stream.send_message`` records after sending."""
    stream._send_message_done = True
    stream._messages_sent += 1
    connection = stream._stream.connection
    connection.messages_sent += 1
    connection.last_message_sent = time.monotonic()


ProtocolFactory = Callable[[], grpclib.protocol.H2Protocol]
#: Given grpclib's protocol factory, the protocol the event loop gets for one new connection.
ConnectionGuard = Callable[[ProtocolFactory], asyncio.Protocol]


def guard_connections(server: grpclib.server.Server, guard: ConnectionGuard) -> None:
    """Give every connection ``server`` accepts (from now on) to ``guard(factory)``, which may
    refuse it or call ``factory()`` for grpclib's protocol and wrap it (natsgw.edge.guard).

    Why: connection caps, timeouts and frame budgets (issue 17 rows A, E, F, H) need to sit
    between the event loop and grpclib's ``H2Protocol``, and the protocol factory,
    ``Server._protocol_factory``, is private with no hook; calling it only for admitted
    connections also means a refused one costs grpclib nothing. Composes with
    :func:`wrap_transports` (call that first). Call before ``Server.start``.
    Upstream fix that removes it: a protocol factory argument on ``grpclib.server.Server``.
    """
    factory = server._protocol_factory

    def protocol_factory() -> asyncio.Protocol:
        return guard(factory)

    server._protocol_factory = protocol_factory  # type: ignore[assignment,method-assign]


#: Sees one h2 event before grpclib does; False: grpclib never sees it.
EventHook = Callable[[Any], bool]


def intercept_events(
    protocol: grpclib.protocol.H2Protocol,
    *,
    on_request: EventHook,
    on_reset: EventHook,
    on_ping: EventHook,
    on_settings: EventHook,
) -> None:
    """Put hooks before grpclib's handling of new requests, stream resets, PINGs and SETTINGS on
    one connection (after ``protocol.connection_made``), and make a reset of a request whose
    handler never started leave nothing behind.

    Why: grpclib dispatches h2 events through a per-connection dict (the private
    ``EventsProcessor.processors``) with no hook, so counting control frames per connection
    (the edge's budgets) means replacing its entries, on this connection only. And grpclib
    removes a stream from its connection table (``EventsProcessor.streams``) only in the
    ``finally`` of the handler task's coroutine: a stream reset before that task first ran is
    cancelled before its coroutine starts, the ``finally`` never runs, and the stream stayed
    in the table for the connection's life (row A: ~7.4 KiB per HEADERS + RST_STREAM).
    grpclib also keeps every cancelled task in ``Handler._cancelled`` until its next clean-up
    (after ten more requests, keeping those not yet done): a never-started one is taken out at
    once, as nobody needs to wait for it.
    Private: ``H2Protocol.processor``, ``EventsProcessor.processors``/``streams``/``handler``,
    ``Handler._tasks``/``_cancelled``.
    Upstream fix that removes it: releasing the stream in ``Handler.cancel`` when the task had
    not started (or a done callback), and event hooks on grpclib's server protocol.
    """
    processor = protocol.processor
    processors: dict[type, Any] = processor.processors
    request = processors[RequestReceived]
    reset = _releasing_reset(processor, processors[StreamReset])
    ping = processors[PingReceived]
    settings = processors[RemoteSettingsChanged]

    def process_request(event: Any) -> None:
        if on_request(event):
            request(event)

    def process_reset(event: Any) -> None:
        if on_reset(event):
            reset(event)

    def process_ping(event: Any) -> None:
        if on_ping(event):
            ping(event)

    def process_settings(event: Any) -> None:
        if on_settings(event):
            settings(event)

    processors[RequestReceived] = process_request
    processors[StreamReset] = process_reset
    processors[PingReceived] = process_ping
    processors[RemoteSettingsChanged] = process_settings


def _releasing_reset(processor: Any, reset: Callable[[Any], None]) -> Callable[[Any], None]:
    """grpclib's ``process_stream_reset``, then what the handler's ``finally`` would have done
    (``release_stream``: drop the stream, wake stream waiters, give its unread window back)
    when the handler's coroutine never started."""
    streams = processor.streams
    handler = processor.handler  # its ``_tasks`` dict is replaced now and then: look it up
    connection = processor.connection

    def process(event: Any) -> None:
        stream = streams.get(event.stream_id)
        task = handler._tasks.get(stream) if stream is not None else None
        reset(event)
        if task is None or inspect.getcoroutinestate(task.get_coro()) != inspect.CORO_CREATED:
            return
        handler._cancelled.discard(task)  # nothing to wait for: it never ran
        if streams.get(event.stream_id) is stream:
            del streams[event.stream_id]
            connection.stream_close_waiter.set()
            if not connection.is_closing():
                connection.ack(event.stream_id, stream.buffer.unacked_size())

    return process


def forget_calls_when_done(protocol: grpclib.protocol.H2Protocol) -> None:
    """After a connection is lost: drop grpclib's references to each of its call tasks once
    the task has finished.

    Why: grpclib's per-connection ``Handler`` keeps every call's task (keyed by its stream) in
    ``_tasks``/``_cancelled`` until a clean-up that runs only when the connection accepts more
    requests, which a lost one never does; the handler itself lives on in ``Server._handlers``
    until ten more connections were made. A call cut off mid-answer ended with an exception
    whose traceback holds its frames, and so its answer: 24 unread 8 MiB ObjectGet answers
    stayed in memory after the client had gone (row E). Private: ``H2Protocol.handler``,
    ``Handler._tasks``/``_cancelled``.
    Upstream fix that removes it: a done callback per task in ``Handler.accept``.
    """
    handler = protocol.handler
    tasks: dict[Any, asyncio.Task[None]] = handler._tasks  # type: ignore[attr-defined]
    cancelled: set[asyncio.Task[None]] = handler._cancelled  # type: ignore[attr-defined]
    for stream, task in list(tasks.items()):
        _forget_when_done(task, functools.partial(_pop_call, tasks, stream))
    for task in list(cancelled):
        _forget_when_done(task, cancelled.discard)


def _pop_call(tasks: dict[Any, asyncio.Task[None]], stream: Any, _task: object) -> None:
    tasks.pop(stream, None)


def _forget_when_done(task: asyncio.Task[None], forget: Callable[[Any], object]) -> None:
    if task.done():
        forget(task)
    else:
        task.add_done_callback(forget)


def h2_connection(protocol: grpclib.protocol.H2Protocol) -> H2Connection:
    """The h2 connection of a grpclib server connection (to send a GOAWAY on it).

    Why: grpclib keeps it on its private ``Connection._connection``.
    Upstream fix that removes it: a ``Connection.goaway(error_code, debug)`` in grpclib.
    """
    return protocol.connection._connection


def grpclib_connection(protocol: grpclib.protocol.H2Protocol) -> Any:
    """The grpclib ``Connection`` a server protocol made in ``connection_made``.

    Why: the edge marks a connection once a call on it is admitted, and a call knows only its
    stream; the protocol's ``connection`` attribute is the one object both can reach.
    Upstream fix that removes it: a per-connection context on grpclib's server stream.
    """
    return protocol.connection


def stream_connection(stream: grpclib.server.Stream[Any, Any]) -> Any:
    """The grpclib ``Connection`` a call's stream belongs to (private ``Stream._stream``)."""
    return stream._stream.connection


def open_calls(protocol: grpclib.protocol.H2Protocol) -> int:
    """Requests grpclib is serving on the connection (its connection table's size).

    Why: an idle connection is one with no call in progress; only grpclib's private
    ``EventsProcessor.streams`` knows.
    Upstream fix that removes it: a public count of open streams on grpclib's connection.
    """
    return len(protocol.processor.streams)


def stream_data_sent(protocol: grpclib.protocol.H2Protocol, stream_id: int) -> int:
    """DATA bytes grpclib has sent on one stream of the connection so far (0: no such call).

    Why: the edge tells a client that reads slowly (its windows open now and then, so bytes
    go out) from one that never does (row E: an answer waiting on a window that never grows);
    grpclib counts them on its private ``EventsProcessor.streams`` entries' ``data_sent``.
    Upstream fix that removes it: a send timeout for streams waiting for window in grpclib.
    """
    stream = protocol.processor.streams.get(stream_id)
    return 0 if stream is None else stream.data_sent
