"""Consul registration through the local agent's HTTP API, as the seed describes it.

Three agent endpoints, called with aiohttp (already a dependency):

- ``PUT /v1/agent/service/register`` — name ``SERVICE_NAME`` (``nats-grpc-service``), id
  ``nats-service-{hostname}``, address, port, tags ``grpc nats messaging eventbus``, meta, and a
  gRPC health check every ``NATSGW_CONSUL_CHECK_INTERVAL`` (10 s) with
  ``DeregisterCriticalServiceAfter``;
- ``GET /v1/agent/service/<id>`` every ``NATSGW_CONSUL_SYNC_INTERVAL`` — a 404 means the agent
  forgot the service (agent restart, critical deregistration): register again;
- ``PUT /v1/agent/service/deregister/<id>`` on shutdown.

Why not a client library: the maintained one (py-consul) brings ``requests`` along for its sync API,
has no type information (mypy --strict), and we use three endpoints; a dozen lines of aiohttp with
our own timeouts and backoff are easier to reason about.

Consul unreachable at start does not stop the gateway: registration is retried in the background
with backoff, and each failure is logged.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import structlog

from natsgw import __version__
from natsgw.backoff import Backoff
from natsgw.config import Settings, is_loopback

log = structlog.get_logger("natsgw.ops.consul")

TAGS = ("grpc", "nats", "messaging", "eventbus")
_BACKOFF = Backoff(base=0.5, cap=30.0)


def _go_duration(seconds: float) -> str:
    return f"{seconds:g}s"


def service_definition(settings: Settings, port: int, *, tls: bool) -> dict[str, Any]:
    """The agent's service registration payload (pure; see module docstring)."""
    hostname = settings.service_hostname or socket.gethostname()
    address = settings.consul_service_address
    if not address:
        wildcard = settings.grpc_host in ("0.0.0.0", "::", "")
        address = hostname if wildcard else settings.grpc_host
    check: dict[str, Any] = {
        "Name": f"{settings.service_name} gRPC health",
        "GRPC": f"{address}:{port}",
        "GRPCUseTLS": tls,
        "Interval": _go_duration(settings.consul_check_interval),
        "Timeout": _go_duration(min(5.0, settings.consul_check_interval)),
        "DeregisterCriticalServiceAfter": _go_duration(settings.consul_deregister_after),
    }
    if tls:
        check["TLSSkipVerify"] = False
    return {
        "ID": f"nats-service-{hostname}",
        "Name": settings.service_name,
        "Address": address,
        "Port": port,
        "Tags": list(TAGS),
        "Meta": {
            "version": __version__,
            "protocol": "grpc",
            "tls": "true" if tls else "false",
            "auth_mode": settings.auth_mode.value,
        },
        "Check": check,
    }


class ConsulRegistration:
    """Keeps the service registered while the gateway runs; owns one background task."""

    def __init__(
        self,
        settings: Settings,
        port: int,
        *,
        tls: bool = False,
        base_url: str = "",
        timeout: float = 5.0,
    ) -> None:
        self.definition = service_definition(settings, port, tls=tls)
        self.service_id: str = self.definition["ID"]
        self.base_url = base_url or f"http://{settings.consul_host}:{settings.consul_port}"
        self.sync_interval = settings.consul_sync_interval
        self._headers = {"X-Consul-Token": settings.consul_token} if settings.consul_token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.registered = False
        self.registrations = 0
        if is_loopback(str(self.definition["Address"])):
            log.warning(
                "consul_loopback_address",
                address=self.definition["Address"],
                hint="set NATSGW_CONSUL_SERVICE_ADDRESS or GRPC_HOST so others can reach it",
            )

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def _register(self) -> None:
        assert self._session is not None
        async with self._session.put(
            self._url("/v1/agent/service/register"), json=self.definition, headers=self._headers
        ) as response:
            if response.status != 200:
                text = (await response.text())[:200]
                raise RuntimeError(f"Consul answered {response.status}: {text}")
        self.registered = True
        self.registrations += 1
        log.info(
            "consul_registered",
            service=self.definition["Name"],
            id=self.service_id,
            address=f"{self.definition['Address']}:{self.definition['Port']}",
        )

    async def _known(self) -> bool:
        """Does the agent still know the service? (404: it forgot it.)"""
        assert self._session is not None
        async with self._session.get(
            self._url(f"/v1/agent/service/{self.service_id}"), headers=self._headers
        ) as response:
            if response.status == 404:
                return False
            if response.status != 200:
                raise RuntimeError(f"Consul answered {response.status}")
            return True

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                if not self.registered:
                    await self._register()
                elif not await self._known():
                    log.warning("consul_forgot_service", id=self.service_id)
                    self.registered = False
                    continue
                attempt = 0
                await asyncio.sleep(self.sync_interval)
            except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError) as exc:
                delay = _BACKOFF.delay(attempt)
                attempt += 1
                log.warning(
                    "consul_unreachable",
                    url=self.base_url,
                    error=str(exc) or type(exc).__name__,
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="natsgw-consul")

    async def stop(self) -> None:
        """Stop the keeper and deregister (best effort, bounded by the request timeout)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._session is None:
            return
        try:
            async with self._session.put(
                self._url(f"/v1/agent/service/deregister/{self.service_id}"),
                headers=self._headers,
            ) as response:
                if response.status == 200:
                    log.info("consul_deregistered", id=self.service_id)
                else:
                    log.warning("consul_deregister_failed", status=response.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("consul_deregister_failed", error=str(exc) or type(exc).__name__)
        finally:
            self.registered = False
            await self._session.close()
            self._session = None
