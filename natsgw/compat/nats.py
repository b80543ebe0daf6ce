"""nats-py internals the adapter needs (natsgw.adapter is the only user of this module)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import nats.aio.client
from nats import errors as nats_errors

from natsgw.compat import require

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

PINNED = "2.16.0"
require("nats-py", PINNED, __name__)


async def flush_pending(client: Client) -> None:
    """Write every command nats-py still holds in its queue to the socket, now.

    Why: ``Client.flush()`` writes its PING straight to the transport, ahead of PUB/SUB commands
    still queued for nats-py's flusher task, so its PONG can come back before those commands were
    even sent; a publish confirmation (or an announced subscription) must follow what it
    confirms. tests/integration/test_adapter_ordering.py records the socket writes.
    Upstream fix that removes it: ``flush()`` queueing its PING behind pending commands, or a
    public buffer-flush call like nats.go's ``FlushBuffer`` / nats.java's ``flushBuffer()``.
    """
    await client._flush_pending(force_flush=True)


def server_info(client: Client) -> Mapping[str, Any]:
    """The INFO block the connected server sent (a copy).

    Why: nats-py exposes ``max_payload`` and ``connected_server_version`` only; the server's id
    and name and whether it has JetStream and headers (shown by the health and stats RPCs) are
    only in the private ``_server_info``.
    Upstream fix that removes it: public accessors like nats.go's ``ConnectedServerId()``,
    ``ConnectedServerName()`` and ``HeadersSupported()``.
    """
    return dict(client._server_info)


def set_read_size(size: int) -> None:
    """Make nats-py read up to ``size`` bytes from its socket per turn of the event loop.

    Why: nats-py reads 32 KiB per turn. A gateway with many streams writing to gRPC clients then
    reads NATS too slowly and nats-server cuts its connection as a slow consumer; 1 MiB per turn
    keeps the read side ahead. The size is the module constant ``DEFAULT_BUFFER_SIZE``, read at
    connect and on each read, with no connect option; setting it is process-wide (natsgw is the
    only nats-py user in its process).
    Upstream fix that removes it: a ``read_buffer_size`` option on ``nats.connect`` (nats.go
    and nats.java size their read buffers per connection).
    """
    nats.aio.client.DEFAULT_BUFFER_SIZE = size


#: What ``Client.publish`` refuses in a subject or reply (nats-py 2.16's ``_SUBJECT_INVALID_RE``).
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")
_CRLF = b"\r\n"
_CONNECTED = nats.aio.client.Client.CONNECTED


class PubCommands:
    """``PUB`` commands of many header-less messages, handed to nats-py's outgoing buffer in
    one piece: the bytes ``Client.publish`` would queue for each, checked as it checks them.

    Why: ``Client.publish`` costs ~2 µs of Python per message (three coroutines, a subject
    regex, four state properties, stats and pending-buffer bookkeeping, a flusher kick): 80 % of
    a 1000-message PublishBatch's handler time (py-spy and cProfile, natsgw/service/messaging.py).
    Building the commands here and queueing them once per slice uses the private
    ``_send_command`` (append to ``_pending``, force a flush past ``_max_pending_size``),
    ``_flush_pending`` (kick the flusher), ``_flush_queue``, ``_max_pending_size`` and
    ``_pending_data_size``. Messages with headers still go through ``Client.publish`` (its
    header encoding is not duplicated here).
    Upstream fix that removes it: a batch publish on nats-py's ``Client`` (queue many messages
    with one call), as nats.go's buffered ``Publish`` makes cheap per message.
    """

    __slots__ = ("_client", "_head", "_key", "_parts", "bytes", "count")

    def __init__(self, client: Client) -> None:
        self._client = client
        self._parts: list[bytes] = []
        self._key: tuple[str, str, int] = ("", "", -1)
        self._head = b""
        #: Messages and payload bytes added since the last :meth:`send`.
        self.count = 0
        self.bytes = 0

    def add(self, subject: str, reply: str, data: bytes) -> None:
        """Queue one message here; BadSubjectError when ``Client.publish`` would refuse it."""
        key = (subject, reply, len(data))
        if key != self._key:  # a batch mostly repeats one subject and size
            if not subject or _BAD_SUBJECT.search(subject) or _BAD_SUBJECT.search(reply):
                raise nats_errors.BadSubjectError
            self._head = f"PUB {subject} {reply} {len(data)}\r\n".encode()
            self._key = key
        self._parts += (self._head, data, _CRLF)
        self.count += 1
        self.bytes += len(data)

    async def send(self) -> None:
        """Queue what was added on the connection, as ``Client.publish`` queues one message;
        raises what it raises for a closed, draining or (while reconnecting) full connection,
        before anything is queued. Like ``Client.publish``, a failure while flushing (a dead
        flusher task: written inline) can raise after the bytes reached the socket: the caller
        reports those messages failed, so a retry may deliver them twice, never zero times.
        Either way the commands here are dropped."""
        parts, self._parts = self._parts, []
        count, size = self.count, self.bytes
        self.count = self.bytes = 0
        if not parts:
            return
        await _queue(self._client, b"".join(parts), count, size)


async def _queue(client: Client, command: bytes, count: int, size: int) -> None:
    """Queue ready-made commands of ``count`` messages (``size`` payload bytes) as
    ``Client.publish`` queues one, after the same state checks (``_status`` read once for the
    usual connected case: three state properties cost ~0.9 µs)."""
    if client._status != _CONNECTED:
        if client.is_closed:
            raise nats_errors.ConnectionClosedError
        if client.is_draining_pubs:
            raise nats_errors.ConnectionDrainingError
        if not client.is_connected and (
            client._max_pending_size <= 0
            or len(command) + client._pending_data_size > client._max_pending_size
        ):
            raise nats_errors.OutboundBufferLimitError
    client.stats["out_msgs"] += count
    client.stats["out_bytes"] += size
    await client._send_command(command)
    if client._flush_queue is not None and client._flush_queue.empty():
        await client._flush_pending()


#: Header names ``Client.publish`` accepts (nats-py 2.16's ``_HEADER_KEY_RE``, RFC 7230 tokens).
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: What ``Client.publish`` turns into spaces in a header value (its ``_HEADER_VALUE_NEWLINES``).
_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def header_block(headers: Mapping[str, str]) -> bytes:
    """The header block ``Client.publish`` writes for ``headers`` (``NATS/1.0``, one
    ``key: value`` line each, a blank line); BadHeaderError for a name it would refuse.

    Why: :class:`HPubCommands` queues messages with headers as ready-made commands, so it needs
    the bytes nats-py would send; nats-py builds them inline in the private ``_send_publish``.
    Upstream fix that removes it: the batch publish named at :class:`PubCommands`.
    """
    block = bytearray(b"NATS/1.0\r\n")
    for name, value in headers.items():
        key = name.strip()
        if not key:
            continue  # as nats-py: an empty name is skipped
        if not _HEADER_KEY.fullmatch(key):
            raise nats_errors.BadHeaderError(key)
        block += f"{key}: {value.strip().translate(_VALUE_NEWLINES)}\r\n".encode()
    block += _CRLF
    return bytes(block)


class HPubCommands(PubCommands):
    """:class:`PubCommands` for messages with a header block (``HPUB``), each with its own
    reply subject: a JetStream batch publish is one request per message.

    Why: a 1000-message PublishToStreamBatch spent ~25 % of the gateway's CPU in
    ``Client.publish`` with headers (header dict copies, per-header regex and encoding, three
    coroutines), around the ``Nats-Expected-Stream`` header every message carries; the block is
    built once per batch (:func:`header_block`) and the commands queued once per window through
    :meth:`PubCommands.send` (same private members, same checks).
    Upstream fix that removes it: the batch publish named at :class:`PubCommands`.
    """

    __slots__ = ("_subject",)

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._subject: str | None = None  # the last subject found valid

    def add_with_headers(self, subject: str, reply: str, block: bytes, data: bytes) -> None:
        """Queue one message with header ``block`` (from :func:`header_block`); BadSubjectError
        when ``Client.publish`` would refuse its subject or reply."""
        if subject != self._subject:  # a batch mostly repeats one subject
            if not subject or _BAD_SUBJECT.search(subject):
                raise nats_errors.BadSubjectError
            self._subject = subject
        if _BAD_SUBJECT.search(reply):
            raise nats_errors.BadSubjectError
        size = len(block)
        self._parts += (
            f"HPUB {subject} {reply} {size} {size + len(data)}\r\n".encode(),
            block,
            data,
            _CRLF,
        )
        self.count += 1
        self.bytes += len(data)


async def publish_request(
    client: Client,
    subject: str,
    reply: str,
    data: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Queue one request message (``PUB``, or ``HPUB`` with ``headers``): what
    ``Client.publish(subject, data, reply=reply, headers=headers)`` queues, after its checks
    (BadSubjectError, BadHeaderError, MaxPayloadError and the connection-state errors).

    Why: a request answered on natsgw.adapter.replies.Requester is a hot path (every KV and
    object read is one); ``Client.publish`` spends its ~2 µs on subject regexes run twice,
    state properties, header encoding and three nested coroutines. Same private members as
    :meth:`PubCommands.send`.
    Upstream fix that removes it: the batch publish named at :class:`PubCommands`, or a cheaper
    ``Client.request`` (see natsgw.adapter.replies.Requester).
    """
    if not subject or _BAD_SUBJECT.search(subject) or _BAD_SUBJECT.search(reply):
        raise nats_errors.BadSubjectError
    size = len(data)
    if size > client.max_payload:
        raise nats_errors.MaxPayloadError
    if headers:
        block = header_block(headers)
        if len(block) + size > client.max_payload:  # nats-server counts headers too
            raise nats_errors.MaxPayloadError
        command = b"".join(
            (
                f"HPUB {subject} {reply} {len(block)} {len(block) + size}\r\n".encode(),
                block,
                data,
                _CRLF,
            )
        )
    else:
        command = b"".join((f"PUB {subject} {reply} {size}\r\n".encode(), data, _CRLF))
    await _queue(client, command, 1, size)


class _Inline:
    """Stands in for the future nats-py resolves with an old-style request's reply."""

    __slots__ = ("_on_msg",)

    def __init__(self, on_msg: Callable[[Msg], None]) -> None:
        self._on_msg = on_msg

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        self._on_msg(msg)


async def subscribe_inline(
    client: Client, subject: str, on_msg: Callable[[Msg], None]
) -> Subscription:
    """Subscribe to ``subject``, ``on_msg`` called for each message inside nats-py's read loop.
    ``on_msg`` must be quick and must not raise (it would end the read loop).

    Why: with a callback, nats-py puts each message on the subscription's queue for a task of
    its own, which then awaits the callback: a queue round trip and a task step per message, for
    natsgw.adapter.replies.Requester whose handling of a reply is a dict lookup and a
    ``set_result``. Uses the private path ``_process_msg`` takes for a subscription made with
    ``future=`` (old-style requests): it checks ``future.cancelled()`` and calls
    ``future.set_result(msg)``, for every message while the subscription has no ``max_msgs``;
    no task, no queue, and it is resubscribed after a reconnect like any subscription.
    Upstream fix that removes it: a synchronous message handler on ``Client.subscribe`` (as
    nats.go's ``Subscribe`` handlers run on the connection's delivery goroutine), or a cheaper
    ``Client.request``.
    """
    return await client.subscribe(subject, future=cast("asyncio.Future[Any]", _Inline(on_msg)))
