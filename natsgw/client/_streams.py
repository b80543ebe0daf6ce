"""One server-streaming call held open: opened on first use, closed however the caller leaves.

grpclib's stream is an async context manager; callers of ``subscribe``/``watch`` want an async
iterator they can also ``async with``. This adapts one to the other, translates errors, and (for
streams that should run until the caller leaves) opens the call again when it breaks: see
:mod:`natsgw.client._retry` for the rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from grpclib.client import Channel, Stream
from grpclib.const import Cardinality

from natsgw.client._retry import Retry, refused_while_draining
from natsgw.client.errors import NatsgwError, Unavailable, translated

log = logging.getLogger("natsgw.client")

#: How long one attempt to open a broken stream again may take.
REOPEN_TIMEOUT = 10.0

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Out = TypeVar("Out")


class ServerStream(Generic[Req, Resp, Out]):
    """Async iterator (and async context manager) over one unary-stream call's responses.

    ``channel`` gives the connection to open the call on (the client's current one).
    ``convert`` turns each response into what the caller sees, or ``None`` to skip it (heartbeats).
    ``riders`` names the further responses a batched response carries (``max_batch``), which are
    handed out one by one after it, so callers never see the batching.

    ``retry`` (with ``resume``) makes a stream that is meant to run until the caller leaves
    survive a broken call: on UNAVAILABLE, a lost connection, or an end the caller did not ask
    for (``ended_early()`` says whether an OK end counts as one), the call is opened again with
    ``resume(request)`` after a backoff, up to ``retry.attempts`` tries in a row; then the error
    is raised. ``on_close`` runs once, when the stream is closed.
    """

    def __init__(
        self,
        channel: Callable[[], Channel],
        path: str,
        request: Req,
        response_type: type[Resp],
        convert: Callable[[Resp], Out | None],
        metadata: Mapping[str, str],
        timeout: float | None = None,
        riders: Callable[[Resp], Iterable[Resp]] | None = None,
        *,
        retry: Retry | None = None,
        resume: Callable[[Req], Req] | None = None,
        ended_early: Callable[[], bool] | None = None,
        reconnect: Callable[[Channel], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._channel = channel
        self._path = path
        self._request = request
        self._response_type = response_type
        self._convert = convert
        self._metadata = metadata
        self._timeout = timeout
        self._riders = riders
        self._ready: deque[Out] = deque()
        self._stack: contextlib.AsyncExitStack | None = None
        self._stream: Stream[Any, Any] | None = None
        self._done = False
        self._finished = False  # the server sent its trailers: nothing to cancel
        self._retry = retry
        self._resume = resume
        self._ended_early = ended_early
        self._reconnect = reconnect
        #: The connection the call was last opened on (the one to leave if it was refused).
        self._opened_on: Channel | None = None
        self._closing = False
        self._on_close = on_close
        #: How often the call was opened again after it broke.
        self.resumed = 0

    async def open(self) -> Self:
        """Send the request and wait for the response headers.

        For ``Subscribe`` the gateway sends them once the NATS subscription exists, so a message
        published after ``open()`` returns is delivered.
        """
        if self._stream is not None:
            return self
        stack = contextlib.AsyncExitStack()
        channel = self._opened_on = self._channel()
        try:
            async with translated():
                stream = await stack.enter_async_context(
                    channel.request(
                        self._path,
                        Cardinality.UNARY_STREAM,
                        type(self._request),
                        self._response_type,
                        timeout=self._timeout,
                        metadata=dict(self._metadata),
                    )
                )
                await stream.send_message(self._request, end=True)
                await stream.recv_initial_metadata()
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._stream = stack, stream
        return self

    async def next_response(self) -> Resp | None:
        """The next raw response, or None once the server has ended the stream with OK."""
        if self._done:
            return None
        if self._stream is None:
            await self.open()
        while True:
            try:
                return await self._receive()
            except Unavailable as exc:
                if self._retry is None or self._closing:
                    await self._end()
                    raise
                await self._reopen(exc)
                if self._closing:  # closed by another task while it was being reopened
                    return None
            except NatsgwError:
                await self._end()
                raise

    async def _end(self) -> None:
        """The call failed for good: release it now, not only if the caller closes the stream
        (grpclib keeps every stream on its connection until its context is left, so a caller
        that iterated without ``async with`` would leave one behind per failed call)."""
        self._done = True
        await self._drop()

    async def _receive(self) -> Resp | None:
        assert self._stream is not None
        async with translated():
            response: Resp | None = await self._stream.recv_message()
            if response is None:
                self._finished = True
                await self._stream.recv_trailing_metadata()  # raises on a non-OK status
        if response is None:
            if self._retry is not None and self._ended_early is not None and self._ended_early():
                raise Unavailable("the gateway ended the stream (shutting down?)")
            self._done = True
        return response

    async def _reopen(self, cause: Unavailable) -> None:
        """Open the call again (resumed), with backoff; raise ``cause``'s kind when it cannot."""
        assert self._retry is not None
        log.info("stream %s broke (%s); opening it again", self._path, cause)
        await self._drop()
        if self._resume is not None:
            self._request = self._resume(self._request)
        last = cause
        for delay in self._retry.delays():
            if refused_while_draining(last) and self._reconnect and self._opened_on is not None:
                self._reconnect(self._opened_on)  # that connection's gateway is on its way out
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                async with asyncio.timeout(REOPEN_TIMEOUT):
                    await self.open()
            except TimeoutError:
                await self._drop()
                last = Unavailable(f"no answer to the new call within {REOPEN_TIMEOUT:g} s")
                continue
            except Unavailable as exc:
                last = exc
                continue
            if self._closing:
                await self._drop()
                return
            self.resumed += 1
            return
        self._done = True
        raise Unavailable(
            f"the stream broke and could not be opened again "
            f"({self._retry.attempts} attempts): {last.message}"
        ) from last

    async def _drop(self) -> None:
        """Forget the current call (cancelling it unless the server ended it)."""
        stack, stream = self._stack, self._stream
        self._stack = self._stream = None
        finished, self._finished = self._finished, False
        if stack is None:
            return
        if stream is not None and not finished:
            with contextlib.suppress(Exception):
                await stream.cancel()
        with contextlib.suppress(Exception):
            await stack.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Out:
        while not self._ready:
            response = await self.next_response()
            if response is None:
                await self.aclose()
                raise StopAsyncIteration
            self._take(response)
        return self._ready.popleft()

    def _take(self, response: Resp) -> None:
        out = self._convert(response)
        if out is not None:
            self._ready.append(out)
        for rider in self._riders(response) if self._riders is not None else ():
            out = self._convert(rider)
            if out is not None:
                self._ready.append(out)

    async def aclose(self) -> None:
        """End the call (cancel it unless the server ended it): the gateway releases its side."""
        self._done = True
        self._closing = True
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
        await self._drop()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
