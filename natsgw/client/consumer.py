"""A JetStream consumer the way Google Pub/Sub's client does it: iterate, ack, never think of RPCs.

- **Flow control**: the gateway's ``Consume`` stream delivers while fewer than ``max_messages`` /
  ``max_bytes`` are outstanding (delivered, not yet settled); settling frees the window.
- **Batched acks**: ``msg.ack()``/``nak()``/``term()`` only queue. The queue goes out as one
  ``AckMessages`` call per action when it reaches ``ack_batch`` tokens or ``ack_interval`` after
  the first one, and whatever is queued is sent before the consumer closes.
- **Lease extension**: while a message is held unsettled, it is sent ``IN_PROGRESS`` every half
  ``ack_wait``, so a slow handler keeps it instead of seeing it redelivered elsewhere, up to
  ``max_lease`` after delivery (then it is left to redeliver).
- **Release on exit**: leaving ``async with`` ends the stream, then naks every message that was
  delivered but not settled (not yet handed out, or handed out and neither acked nor nak'ed), so
  another consumer gets it at once instead of after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from natsgw._generated.isa import nats as pb
from natsgw.client._streams import ServerStream
from natsgw.client.errors import NatsgwError
from natsgw.client.types import AckAction, JsMsg

log = logging.getLogger("natsgw.client")

#: NATS's ack_wait when the consumer sets none.
DEFAULT_ACK_WAIT = 30.0
#: Tokens per AckMessages call, so one call stays small however many messages are held.
MAX_TOKENS_PER_CALL = 1000

SendAcks = Callable[
    [list[str], AckAction, datetime.timedelta | None], Awaitable[pb.AckMessagesResponse]
]


class AckBatcher:
    """Queues settlements, sends them in batches, and extends the leases of unsettled messages."""

    def __init__(
        self,
        send: SendAcks,
        *,
        ack_batch: int,
        ack_interval: float,
        ack_wait: float,
        max_lease: float,
    ) -> None:
        self._send = send
        self._ack_batch = ack_batch
        self._ack_interval = ack_interval
        self._extend_every = max(ack_wait / 2, 0.05)
        self._max_lease = max_lease
        self._queued: dict[tuple[AckAction, datetime.timedelta | None], list[str]] = {}
        self._queued_count = 0
        self._held: dict[str, float] = {}  # ack token -> monotonic time of delivery
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Settlements the gateway refused (e.g. the message was already redelivered elsewhere).
        self.failed = 0
        #: Settlements sent and confirmed, and lease extensions sent.
        self.settled = 0
        self.extended = 0
        #: Unsettled messages nak'ed when the consumer stopped.
        self.released = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="natsgw-client-acks"),
            asyncio.create_task(self._lease_loop(), name="natsgw-client-leases"),
        ]

    def held(self, msg: JsMsg) -> None:
        if msg.ack_token:
            self._held[msg.ack_token] = time.monotonic()

    @property
    def outstanding(self) -> int:
        return len(self._held)

    def settle(self, msg: JsMsg, action: AckAction, delay: datetime.timedelta | None) -> None:
        if self._held.pop(msg.ack_token, None) is None:
            raise RuntimeError(f"message {msg.sequence} was already acknowledged")
        self._queued.setdefault((action, delay), []).append(msg.ack_token)
        self._queued_count += 1
        if self._queued_count >= self._ack_batch:
            self._wake.set()
        elif self._queued_count == 1:
            asyncio.get_running_loop().call_later(self._ack_interval, self._wake.set)

    def release_held(self) -> int:
        """Queue a NAK for every unsettled message (the consumer stops); returns how many."""
        tokens, self._held = list(self._held), {}
        if tokens:
            self._queued.setdefault((AckAction.NAK, None), []).extend(tokens)
            self._queued_count += len(tokens)
        self.released += len(tokens)
        return len(tokens)

    async def flush(self) -> None:
        """Send everything queued now."""
        queued, self._queued, self._queued_count = self._queued, {}, 0
        for (action, delay), tokens in queued.items():
            await self._send_logged(tokens, action, delay)

    async def _send_logged(
        self, tokens: list[str], action: AckAction, delay: datetime.timedelta | None
    ) -> None:
        for start in range(0, len(tokens), MAX_TOKENS_PER_CALL):
            await self._send_some(tokens[start : start + MAX_TOKENS_PER_CALL], action, delay)

    async def _send_some(
        self, tokens: list[str], action: AckAction, delay: datetime.timedelta | None
    ) -> None:
        try:
            answer = await self._send(tokens, action, delay)
        except NatsgwError as exc:
            self.failed += len(tokens)
            log.warning("acks of %d messages failed: %s", len(tokens), exc)
            return
        refused = [r.error for r in answer.results if not r.success]
        if action is AckAction.IN_PROGRESS:
            self.extended += len(tokens) - len(refused)
        else:
            self.settled += len(tokens) - len(refused)
            self.failed += len(refused)
        if refused:
            log.warning("gateway refused %d of %d acks: %s", len(refused), len(tokens), refused[0])

    async def _flush_loop(self) -> None:
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def _lease_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._extend_every)
            if self._stop.is_set():
                return
            now = time.monotonic()
            expired = [t for t, since in self._held.items() if now - since > self._max_lease]
            for token in expired:
                del self._held[token]  # held too long: let NATS redeliver it
            if self._held:
                await self._send_logged(list(self._held), AckAction.IN_PROGRESS, None)

    async def close(self) -> None:
        """Let a send in flight finish (cancelling it would lose acks), then send the rest."""
        self._stop.set()
        self._wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()


class Consumer:
    """``async with client.consume(stream, consumer) as messages: async for msg in messages``."""

    def __init__(
        self,
        stream: ServerStream[pb.ConsumeRequest, pb.ConsumeResponse, pb.ConsumeResponse],
        ack_wait: Callable[[], Awaitable[float]],
        make_batcher: Callable[[float], AckBatcher],
    ) -> None:
        self._stream = stream
        self._ack_wait = ack_wait
        self._make_batcher = make_batcher
        self._batcher: AckBatcher | None = None
        self._ready: deque[JsMsg] = deque()

    @property
    def batcher(self) -> AckBatcher:
        if self._batcher is None:
            raise RuntimeError("use the consumer inside 'async with'")
        return self._batcher

    async def __aenter__(self) -> Self:
        batcher = self._make_batcher(await self._ack_wait())
        await self._stream.open()
        batcher.start()
        self._batcher = batcher
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the stream, then send queued acks and nak what was delivered but not settled.

        The stream ends first so that released messages are not delivered to it again.
        """
        try:
            await self._stream.aclose()
        finally:
            self._ready.clear()
            if self._batcher is not None:
                self._batcher.release_held()
                await self._batcher.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JsMsg:
        while not self._ready:
            response = await self._stream.next_response()
            if response is None:
                raise StopAsyncIteration
            if response.message is None:
                continue  # heartbeat
            # max_batch: more that were waiting ride in `batch`; all are held (their leases
            # extended) from arrival, not from when the caller reaches them.
            for wire in (response.message, *response.batch):
                msg = JsMsg.from_wire(wire, self.batcher)
                self.batcher.held(msg)
                self._ready.append(msg)
        return self._ready.popleft()
