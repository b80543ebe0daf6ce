"""An ordered, flow-controlled reader of a JetStream stream, shared by Key-Value and Object Store.

nats-py's own ordered consumer answers flow control from a task that wakes every 250 ms and grows
the Object Store's result buffer chunk by chunk; this reader answers flow control as soon as the
caller has taken every message before it, so the server never sends more than its flow-control
window ahead of the caller, and memory stays bounded by that window whatever the stream holds.

Flow control alone lets the server run up to its 32 MiB window (``JsFlowControlMaxPending``) ahead
of the caller once a fast reader has ramped it up, all of it queued in nats-py, per reader. So the
consumer also acknowledges ("ack all") and caps unacknowledged deliveries at ``window`` messages:
the reader acks as the caller takes messages, and the server never has more than ``window``
messages out, whatever their size or the caller's pace.

It is "ordered" in the JetStream sense: an ephemeral push consumer (memory storage, each message
delivered once) whose delivery sequence is checked on every message. A gap, a missed heartbeat
(the server restarted, the consumer vanished, the connection dropped) or a consumer error makes it
recreate the consumer from the stream sequence after the last one handed out, so the caller sees
every message exactly once, in order, across reconnects. Its consumers are made and deleted
through the adapter's one JetStream client (:class:`natsgw.adapter.jetstream.JetStreamAdapter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
from collections.abc import Mapping
from enum import Enum
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import TimeoutError as NatsTimeoutError

from natsgw.adapter.core import backoff_delay
from natsgw.adapter.errors import translated
from natsgw.adapter.flow import Inflow
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.adapter.types import StoredMessage
from natsgw.errors import GatewayError, NotFound, Unavailable
from natsgw.tenancy.acks import parse_ack_subject

log = structlog.get_logger("natsgw.adapter.ordered")

_STATUS = "Status"
_CONTROL = "100"
_STALLED = "Nats-Consumer-Stalled"
_LAST_CONSUMER = "Nats-Last-Consumer"
#: Close tasks started for readers whose owner task ended (kept referenced until done).
_CLOSING: set[asyncio.Task[None]] = set()


class Start(Enum):
    ALL = "all"
    LAST_PER_SUBJECT = "last_per_subject"
    NEW = "new"
    SEQUENCE = "by_start_sequence"


_NS = 1_000_000_000
__all__ = ["OrderedReader", "Start", "StoredMessage"]


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


class OrderedReader:
    """Reads ``filter_subject`` of ``stream`` in stream order; see the module docstring.

    ``follow``: keep going forever (a watch); when the consumer cannot be recreated (NATS down)
    keep retrying. Without it, give up with UNAVAILABLE after ``patience`` seconds without
    progress.
    """

    def __init__(
        self,
        api: JetStreamAdapter,
        stream: str,
        filter_subject: str,
        *,
        start: Start = Start.ALL,
        start_seq: int = 0,
        headers_only: bool = False,
        heartbeat: float = 1.0,
        follow: bool = False,
        patience: float = 10.0,
        pending_bytes: int = 64 * 1024 * 1024,
        window: int = 32,
        inflow: Inflow | None = None,
        message_size: int = 0,
        total: int = 0,
    ) -> None:
        self._api = api
        self._stream = stream
        self._filter = filter_subject
        self._start = start
        self._start_seq = start_seq
        self._headers_only = headers_only
        self._heartbeat = heartbeat
        self._follow = follow
        self._patience = patience
        self._pending_bytes = pending_bytes
        self._window = max(1, window)
        #: Ack after this many taken messages: the server never waits on the caller's last few.
        self._ack_step = max(1, self._window // 4)
        self._acked = 0  # delivery sequence last acknowledged (ack all) on the current consumer
        self._sub: NatsSubscription | None = None
        self._consumer = ""
        self._dseq = 0  # last delivery sequence seen from the current consumer
        self._sseq = 0  # last stream sequence handed to the caller
        self._closed = False
        self._owner: asyncio.Task[Any] | None = None
        #: Messages matching when the first consumer was made (for finite reads).
        self.initial_pending = 0
        self.resets = 0
        #: Flow control across readers (natsgw.adapter.flow): before the server may send more,
        #: ``message_size`` bytes each are reserved in ``inflow``, given back as they arrive.
        self._inflow = inflow
        self._message_size = message_size
        self._total = total  # messages the read will take (0: unknown, keeps going)
        self._credit = 0  # bytes reserved for messages allowed and not yet arrived
        self._taken = 0  # messages handed to the caller
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def open(self) -> None:
        """Create the first consumer; raises NotFound when the stream does not exist.

        The reader also closes itself when the task that opened it ends: a gRPC handler whose
        stream was reset may never resume the generator holding this reader, and its consumer
        and subscription must not outlive the call.
        """
        await self._create(first=True)
        owner = asyncio.current_task()
        if owner is not None:
            owner.add_done_callback(self._owner_done)
            self._owner = owner

    async def close(self) -> None:
        self._closed = True
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.remove_done_callback(self._owner_done)
        await self._drop()

    def _owner_done(self, _task: asyncio.Task[Any]) -> None:
        if self._closed:
            return
        closing = asyncio.get_running_loop().create_task(self.close())
        _CLOSING.add(closing)
        closing.add_done_callback(_CLOSING.discard)

    async def next(self) -> StoredMessage:
        """The next message, waiting as long as it takes (callers bound it with timeouts)."""
        loop = asyncio.get_running_loop()
        stalled_since = loop.time()
        while True:
            if self._closed:
                raise Unavailable("the reader was closed")
            sub = self._sub
            if sub is None:
                try:
                    await self._create(first=False)
                except NotFound:
                    raise
                except GatewayError as exc:
                    if not self._follow and loop.time() - stalled_since > self._patience:
                        raise Unavailable(f"reading {self._stream} stalled: {exc.message}") from exc
                    await asyncio.sleep(max(0.1, backoff_delay(min(self.resets, 4))))
                continue
            try:
                msg = await self._next_msg(sub)
            except (TimeoutError, NatsTimeoutError):
                await self._reset("no heartbeat")
                continue
            except Exception as exc:  # subscription closed under us (reconnect, drain)
                await self._reset(f"subscription ended ({type(exc).__name__})")
                continue
            headers = msg.headers or {}
            status = headers.get(_STATUS)
            if status == _CONTROL:
                await self._control(msg, headers)
                continue
            if status:
                await self._reset(f"status {status} {headers.get('Description', '')}".strip())
                continue
            meta = parse_ack_subject(msg.reply or "")
            if meta is None:
                await self._reset("message without JetStream metadata")
                continue
            if meta.consumer_seq != self._dseq + 1:
                await self._reset(f"gap: delivery {meta.consumer_seq} after {self._dseq}")
                continue
            self._dseq = meta.consumer_seq
            self._sseq = meta.stream_seq
            self._taken += 1
            if self._dseq - self._acked >= self._ack_step:
                # Taken by the caller: let the server send the next few.
                await self._allow(self._dseq - self._acked)
                self._acked = self._dseq
                await self._send(msg.reply)
            return StoredMessage(
                subject=msg.subject,
                data=msg.data,
                headers=headers,
                seq=meta.stream_seq,
                time=datetime.datetime.fromtimestamp(meta.timestamp_ns / _NS, datetime.UTC),
                pending=meta.num_pending,
            )

    async def _next_msg(self, sub: NatsSubscription) -> Msg:
        if self._inflow is None:
            return await sub.next_msg(timeout=self._heartbeat * 3)
        async with asyncio.timeout(self._heartbeat * 3):
            return await self._queue.get()

    async def _arrived(self, queue: asyncio.Queue[Msg], msg: Msg) -> None:
        """A message came off the socket (nats-py's delivery task): its reservation is free."""
        if queue is not self._queue:
            return  # of a consumer already dropped
        if self._credit and not (msg.headers and msg.headers.get(_STATUS)):
            size = min(self._credit, self._message_size)
            self._credit -= size
            if self._inflow is not None:
                self._inflow.give(size)
        queue.put_nowait(msg)

    def _allowed(self, count: int) -> int:
        """How many of ``count`` newly allowed messages can still come (a finite read): those
        already allowed on the current consumer come first."""
        if not self._total:
            return count
        already = self._acked + self._window - self._dseq
        return max(0, min(count, self._total - self._taken - already))

    async def _allow(self, count: int) -> None:
        """Reserve room in the inflow for ``count`` more messages the server may now send."""
        inflow = self._inflow
        if inflow is None:
            return
        size = self._allowed(count) * self._message_size
        if size:
            size = await inflow.take(size)
            self._credit += size

    def _give_back(self) -> None:
        credit, self._credit = self._credit, 0
        if credit and self._inflow is not None:
            self._inflow.give(credit)

    async def _send(self, subject: str) -> None:
        """An empty message (ack, flow-control answer); lost ones are made up by the next."""
        with contextlib.suppress(Exception):
            await self._api.client().publish(subject)

    async def _control(self, msg: Msg, headers: Mapping[str, str]) -> None:
        if msg.reply:
            # Flow control: every message before this one has been taken by the caller.
            await self._send(msg.reply)
            return
        stalled = headers.get(_STALLED)
        if stalled:
            await self._send(stalled)
        last = headers.get(_LAST_CONSUMER)
        if last is not None and last.isdigit() and int(last) != self._dseq:
            await self._reset(f"heartbeat says delivery {last}, saw {self._dseq}")

    def _config(self, deliver_subject: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "deliver_subject": deliver_subject,
            "filter_subject": self._filter,
            # Ack all + max_ack_pending: the window above. Never redelivered (max_deliver 1) and
            # never waited on (a stalled caller just keeps its window; ack_wait is a day).
            "ack_policy": "all",
            "max_ack_pending": self._window,
            "ack_wait": _ns(86400.0),
            "max_deliver": 1,
            "replay_policy": "instant",
            "flow_control": True,
            "idle_heartbeat": _ns(self._heartbeat),
            "inactive_threshold": _ns(max(30.0, self._heartbeat * 10)),
            "mem_storage": True,
            "num_replicas": 1,
        }
        if self._sseq:
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = self._sseq + 1
        elif self._start is Start.SEQUENCE:
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = max(self._start_seq, 1)
        else:
            config["deliver_policy"] = self._start.value
        if self._headers_only:
            config["headers_only"] = True
        return config

    async def _create(self, *, first: bool) -> None:
        nc = self._api.client()
        inbox = nc.new_inbox()
        self._queue = asyncio.Queue()
        with translated(f"subscribe to {self._stream}"):
            sub = await nc.subscribe(
                inbox,
                cb=functools.partial(self._arrived, self._queue) if self._inflow else None,
                pending_msgs_limit=-1,
                pending_bytes_limit=self._pending_bytes,
            )
        try:
            if self._inflow is not None:  # the new consumer sends a window at once
                left = self._total - self._taken
                count = min(self._window, left) if self._total else self._window
                if count > 0:
                    self._credit += await self._inflow.take(count * self._message_size)
            info = await self._api.create_ephemeral(self._stream, self._config(inbox))
        except BaseException:
            self._give_back()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            raise
        # NATS switched to NEW: from now on a reset resumes by sequence, never skips.
        if self._start is Start.NEW and not self._sseq:
            self._start = Start.SEQUENCE
            self._start_seq = info.state.delivered_stream_seq + 1
        self._sub = sub
        self._consumer = info.name
        self._dseq = 0
        self._acked = 0
        if first:
            self.initial_pending = info.state.num_pending

    async def _reset(self, why: str) -> None:
        self.resets += 1
        log.info("ordered_reader_reset", stream=self._stream, reason=why, resume_after=self._sseq)
        await self._drop()

    async def _drop(self) -> None:
        self._give_back()
        sub, self._sub = self._sub, None
        consumer, self._consumer = self._consumer, ""
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if consumer and self._api.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._api.delete_consumer(self._stream, consumer), 1.0)
