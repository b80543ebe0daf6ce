"""``isa.nats.NATSService``: the handler mixins composed over the generated grpclib base.

Cross-cutting work happens here once, for every RPC: the current stream is made available to
handlers, in-flight calls are counted for graceful shutdown, and every exception is turned into
a gRPC status by :func:`natsgw.errors.to_grpc_error`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpclib.const
import grpclib.server
import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from natsgw._generated.isa import nats as pb
from natsgw.errors import to_grpc_error
from natsgw.service.base import Dependencies, current_stream
from natsgw.service.health import HealthHandlers
from natsgw.service.kv import KeyValueHandlers
from natsgw.service.messaging import MessagingHandlers
from natsgw.service.objects import ObjectStoreHandlers
from natsgw.service.stats import StatisticsHandlers
from natsgw.service.streaming import serve_stream

log = structlog.get_logger("natsgw.service")

_StreamFunc = Callable[[grpclib.server.Stream[Any, Any]], Coroutine[Any, Any, None]]


class InFlight:
    """Counts calls being served, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class NATSGateway(
    MessagingHandlers,
    StatisticsHandlers,  # a JetStreamHandlers
    KeyValueHandlers,
    ObjectStoreHandlers,
    HealthHandlers,
    pb.NatsServiceBase,
):
    def __init__(self, deps: Dependencies, in_flight: InFlight | None = None) -> None:
        super().__init__(deps)
        self.in_flight = in_flight or InFlight()

    async def _call_rpc_handler_server_stream(
        self,
        handler: Callable[[Any], AsyncIterator[Any]],
        stream: grpclib.server.Stream[Any, Any],
        request: Any,
    ) -> None:
        """Replaces betterproto2's loop, which never closes the handler on cancellation."""
        await serve_stream(handler(request), stream)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            path: grpclib.const.Handler(
                self._guarded(path, handler.func),
                handler.cardinality,
                handler.request_type,
                handler.reply_type,
            )
            for path, handler in super().__mapping__().items()
        }

    def _guarded(self, path: str, func: _StreamFunc) -> _StreamFunc:
        in_flight = self.in_flight
        observer = self.deps.calls

        async def serve(stream: grpclib.server.Stream[Any, Any]) -> None:
            token = current_stream.set(stream)
            in_flight.enter()
            # Credentials, quotas, metrics, audit (natsgw.pipeline.calls) see the call via `call`.
            call = observer.begin(path, stream)
            error: GRPCError | None = None
            cancelled = False
            try:
                await func(call.stream)
            except (asyncio.CancelledError, GeneratorExit):
                cancelled = True
                raise
            except (StreamClosedError, StreamTerminatedError):
                # The client hung up while we were sending. Tell grpclib it is a cancellation,
                # which it is, rather than an application error with a traceback.
                cancelled = True
                raise asyncio.CancelledError from None
            except Exception as exc:
                error = to_grpc_error(exc)
                if error.status in (Status.INTERNAL, Status.UNKNOWN):
                    log.exception("handler_failed", rpc=path)
                raise error from exc
            finally:
                call.finish(error, cancelled)
                in_flight.leave()
                current_stream.reset(token)

        return serve
