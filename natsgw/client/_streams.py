"""One server-streaming call held open: opened on first use, closed however the caller leaves.

grpclib's stream is an async context manager; callers of ``subscribe``/``watch`` want an async
iterator they can also ``async with``. This adapts one to the other and translates errors.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from grpclib.client import Channel, Stream
from grpclib.const import Cardinality

from natsgw.client.errors import translated

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Out = TypeVar("Out")


class ServerStream(Generic[Req, Resp, Out]):
    """Async iterator (and async context manager) over one unary-stream call's responses.

    ``convert`` turns each response into what the caller sees, or ``None`` to skip it (heartbeats).
    ``riders`` names the further responses a batched response carries (``max_batch``), which are
    handed out one by one after it, so callers never see the batching.
    """

    def __init__(
        self,
        channel: Channel,
        path: str,
        request: Req,
        response_type: type[Resp],
        convert: Callable[[Resp], Out | None],
        metadata: Mapping[str, str],
        timeout: float | None = None,
        riders: Callable[[Resp], Iterable[Resp]] | None = None,
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

    async def open(self) -> Self:
        """Send the request and wait for the response headers.

        For ``Subscribe`` the gateway sends them once the NATS subscription exists, so a message
        published after ``open()`` returns is delivered.
        """
        if self._stream is not None:
            return self
        stack = contextlib.AsyncExitStack()
        try:
            async with translated():
                stream = await stack.enter_async_context(
                    self._channel.request(
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
        assert self._stream is not None
        async with translated():
            response: Resp | None = await self._stream.recv_message()
            if response is None:
                self._done = True
                self._finished = True
                await self._stream.recv_trailing_metadata()  # raises on a non-OK status
        return response

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
        stack, stream = self._stack, self._stream
        self._stack = None
        self._done = True
        if stack is None:
            return
        if stream is not None and not self._finished:
            with contextlib.suppress(Exception):
                await stream.cancel()
        with contextlib.suppress(Exception):
            await stack.aclose()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
