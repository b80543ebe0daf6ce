"""Reads nats-server's HTTP monitoring endpoint (/varz) for server-wide counters.

NATS's client protocol does not report connection counts or traffic totals; the monitoring port
does. It is optional: without ``NATSGW_NATS_MONITOR_URL`` (and outside the embedded default) the
counters read as zero and :meth:`NatsMonitor.varz` says why.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from natsgw.errors import Unavailable


class NatsMonitor:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url)

    async def varz(self) -> dict[str, Any]:
        if not self.url:
            raise Unavailable("no NATS monitoring URL configured (NATSGW_NATS_MONITOR_URL)")
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
