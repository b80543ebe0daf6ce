"""The HTTP side port (``NATSGW_HTTP_PORT``): ``/metrics``, ``/healthz``, ``/readyz``.

- ``/healthz``: 200 while the process serves (liveness); 503 with the reason once it cannot
  recover (its embedded nats-server failed too often, or a NATS connection has been down for
  NATSGW_NATS_DOWN_UNHEALTHY_AFTER), so an orchestrator replaces it;
- ``/readyz``: 200 when NATS is connected and, with JetStream enabled, JetStream answers an
  account-info request within 2 s; 503 with the reason otherwise (readiness);
- ``/metrics``: Prometheus text exposition of :class:`natsgw.ops.metrics.Metrics`;
- ``/status`` (HTML) and ``/status.json``: the operators' read-only status page
  (:mod:`natsgw.ops.status`).

Everything here is read-only (GET and HEAD; other methods answer 405) and unauthenticated: bind
it (NATSGW_HTTP_HOST) where only operators and their scrapers reach it.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from natsgw.adapter import NatsAdapter
from natsgw.errors import GatewayError
from natsgw.ops.metrics import Metrics
from natsgw.ops.sockets import bind_tcp, bound_port
from natsgw.ops.status import StatusPage

_READY_TIMEOUT = 2.0


class HttpSide:
    def __init__(
        self,
        metrics: Metrics,
        adapter: NatsAdapter,
        *,
        jetstream: bool,
        failure: Callable[[], str] = lambda: "",
        status: StatusPage | None = None,
        nats_down_after: float = 45.0,
    ) -> None:
        self.metrics = metrics
        self.status = status
        self.nats_down_after = nats_down_after
        self.failure = failure
        self.adapter = adapter
        self.jetstream = jetstream
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self.status is not None:
            self.status.routes(app)
        return app

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        reason = self.failure()
        if not reason:
            # NATS down for long (a connection that cannot be brought back): a restart may help.
            down, why = self.adapter.outage()
            if down >= self.nats_down_after:
                reason = f"{why} (for {down:.0f}s; NATSGW_NATS_DOWN_UNHEALTHY_AFTER)"
        if reason:
            return web.json_response({"status": "failed", "reason": reason}, status=503)
        return web.json_response({"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        down, why = self.adapter.outage()
        if not self.adapter.connected or down:
            state = self.adapter.state().status.lower() if not self.adapter.connected else ""
            reason = f"NATS connection is {state or 'degraded'}" + (f": {why}" if why else "")
            return web.json_response({"ready": False, "reason": reason}, status=503)
        if self.jetstream:
            try:
                await self.adapter.jetstream_account(_READY_TIMEOUT)
            except GatewayError as exc:
                return web.json_response(
                    {"ready": False, "reason": f"JetStream not reachable: {exc.message}"},
                    status=503,
                )
        return web.json_response({"ready": True})

    async def start(self, host: str, port: int) -> None:
        self._runner, self.port = await serve_app(self.app(), host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port); the runner to clean up, and the port.

    The socket is bound first and handed to aiohttp, so the port is known without reading
    aiohttp's private server objects.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = bind_tcp(host, port)
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, bound_port(sock)
