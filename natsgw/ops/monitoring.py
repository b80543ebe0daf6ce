"""Reads nats-server's HTTP monitoring endpoint (/varz) for server-wide counters.

NATS's client protocol does not report connection counts or traffic totals; the monitoring port
does. It is optional, and off by default: the embedded nats-server opens it only with
``NATSGW_EMBEDDED_MONITOR=true`` (it shows every tenant's subjects to any local process), and an
external one is read only with ``NATSGW_NATS_MONITOR_URL``. Without one :meth:`NatsMonitor.varz`
is empty, so every server-wide counter read from it (NatsHealthCheck's ``connections``, ...)
reads 0; that is said once when the gateway starts, not on every call (a per-call warning would
let any caller fill the log). A configured endpoint that does not answer raises Unavailable.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import structlog

from natsgw.errors import Unavailable

log = structlog.get_logger("natsgw.ops.monitoring")


class NatsMonitor:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        if not self.url:
            log.info(
                "nats_monitor_off",
                detail="server-wide counters from nats-server's /varz (NatsHealthCheck "
                "connections, ...) read 0; set NATSGW_EMBEDDED_MONITOR=true (embedded "
                "nats-server) or NATSGW_NATS_MONITOR_URL to report them",
            )

    @property
    def configured(self) -> bool:
        return bool(self.url)

    async def varz(self) -> dict[str, Any]:
        """The server's /varz; empty without a monitoring endpoint (its counters read 0)."""
        if not self.url:
            return {}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{self.url}/varz") as response:
                response.raise_for_status()
                body: dict[str, Any] = await response.json()
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"NATS monitoring endpoint unreachable: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
