"""Many requests answered on one subscription: ``<inbox>.*``, one reply subject per request.

A request then costs one PUB and one reply, not a subscription (or nats-py's request future and
timer) of its own; and since each request has its own subject, a late answer to an earlier one is
never mistaken for the answer to the current one. Pulls, batched publishes and acks, and object
chunk uploads all use it; :class:`Requester` is the connection's one inbox for single requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog
from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from natsgw.adapter.errors import translated
from natsgw.compat import nats as nats_compat

log = structlog.get_logger("natsgw.adapter.replies")

_STATUS = "Status"
_NO_RESPONDERS = "503"


def no_responders(msg: Msg) -> bool:
    """The server's own answer that nothing was subscribed to the request's subject."""
    return not msg.data and (msg.headers or {}).get(_STATUS) == _NO_RESPONDERS


class ReplyInbox:
    """Reply subjects ``<inbox>.<token>`` on one subscription.

    A reply whose token was registered with :meth:`expect` resolves that future; every other
    reply goes to ``on_other`` (if given), so a caller can also read a stream of replies.
    """

    def __init__(self, nc: NatsClient, what: str) -> None:
        self._nc = nc
        self._what = what
        self._prefix = nc.new_inbox() + "."
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._on_other: Callable[[Msg], None] | None = None
        self._sub: NatsSubscription | None = None

    async def open(self, on_other: Callable[[Msg], None] | None = None) -> None:
        self._on_other = on_other
        with translated(self._what):
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is not None:
            if not future.done():
                future.set_result(msg)
        elif self._on_other is not None:
            self._on_other(msg)

    def subject(self, token: object) -> str:
        """The reply subject for ``token`` (anything without dots or spaces)."""
        return f"{self._prefix}{token}"

    def expect(self, token: object) -> tuple[str, asyncio.Future[Msg]]:
        """A reply subject and the future its one reply resolves."""
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[str(token)] = future
        return self.subject(token), future

    def forget(self, token: object) -> None:
        """Stop waiting for ``token``'s reply (it was never sent, or is too late to matter)."""
        future = self._waiting.pop(str(token), None)
        if future is not None and not future.done():
            future.cancel()

    async def close(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.cancel()
        self._waiting.clear()
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection closed: the server forgot it already
                log.debug("reply_unsubscribe_ignored", what=self._what, error=type(exc).__name__)


def _expire(future: asyncio.Future[Msg | None]) -> None:
    """A request's timer: no reply in time (a result, not an exception: nothing to retrieve
    when the request failed otherwise meanwhile)."""
    if not future.done():
        future.set_result(None)


class Requester:
    """The connection's requests to NATS services (JetStream API, direct gets, stream
    publishes), answered on one ``<inbox>.*`` subscription opened at connect.

    Why not ``Client.request``: per call it draws a NUID and ``secrets.token_hex`` for the
    token, decodes it twice, adds a done-callback, publishes through ``Client.publish`` and waits
    through ``asyncio.wait_for`` (a second future and task callbacks): ~7 % of the gateway's CPU
    in the KVGet benchmark (py-spy). Here a request is a counter, a dict entry, one ready-made
    PUB and one timer, and its reply is handed over in nats-py's read loop. Outcomes are
    ``Client.request``'s: the reply, or nats-py's NoRespondersError, TimeoutError, or the error
    publishing raised. nats-py resubscribes the inbox after a reconnect, as it does every
    subscription.
    """

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._count = 0
        #: Futures by reply subject; an entry lives exactly as long as its request call.
        self._waiting: dict[str, asyncio.Future[Msg | None]] = {}

    async def open(self) -> None:
        with translated("request inbox"):
            # Replies are handed over inside nats-py's read loop: no queue, no task per reply.
            await nats_compat.subscribe_inline(self._nc, self._prefix + "*", self._on_reply)

    def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject)
        if future is not None and not future.done():
            future.set_result(msg)
        # else: answered after its request gave up (timeout, cancellation): nobody waits for it

    async def request(
        self,
        subject: str,
        data: bytes,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> Msg:
        """The one reply to ``data`` sent on ``subject``, as ``Client.request`` returns it."""
        self._count += 1
        reply = f"{self._prefix}{self._count}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg | None] = loop.create_future()
        self._waiting[reply] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await nats_compat.publish_request(self._nc, subject, reply, data, headers)
            msg = await future
        finally:
            timer.cancel()
            del self._waiting[reply]
        if msg is None:
            raise nats_errors.TimeoutError
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise nats_errors.NoRespondersError
        return msg

    def fail_all(self, error: Callable[[], Exception]) -> None:
        """End every waiting request with a fresh ``error()`` now: the connection they were
        sent on is gone, so their replies never come (they would wait their whole timeout)."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error())

    @property
    def max_payload(self) -> int:
        """The connected server's max_payload: the most one reply can carry."""
        return int(self._nc.max_payload)

    @property
    def waiting(self) -> int:
        """Requests waiting for their reply now."""
        return len(self._waiting)
