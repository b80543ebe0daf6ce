"""The HTTP side port of a multi-worker gateway, served by the supervisor for all its workers.

Each worker runs the ordinary side port (natsgw.ops.http) on a private loopback port it reports
to the supervisor; ``NATSGW_HTTP_PORT`` itself is served here, so a scrape or probe sees the
whole gateway rather than whichever worker the kernel picked:

- ``/healthz``: 200 while the supervisor runs (liveness), listing each worker's pid;
- ``/readyz``: 200 when every worker serves and its own ``/readyz`` says ready; 503 naming the
  workers that are not (restarting, NATS away, ...);
- ``/metrics``: every worker's metrics, each sample labelled ``worker="<index>"`` (sum over the
  label for gateway totals), plus the supervisor's own ``natsgw_worker_restarts``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from natsgw.ops.http import serve_app

_TIMEOUT = aiohttp.ClientTimeout(total=3.0)


class WorkerView(Protocol):
    """What the side port needs to know of a worker slot (natsgw.ops.workers.Worker)."""

    @property
    def index(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def http_port(self) -> int: ...
    @property
    def restarts(self) -> int: ...
    @property
    def serving(self) -> asyncio.Event: ...


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_metrics(texts: Sequence[tuple[int, str]], restarts: Sequence[tuple[int, int]]) -> bytes:
    """One exposition from the workers' ones (``(index, text)``), samples labelled by worker."""
    merged: dict[str, Metric] = {}
    for index, text in texts:
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = into
            label = str(index)
            into.samples.extend(
                Sample(s.name, {**s.labels, "worker": label}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    restarted = CounterMetricFamily(
        "natsgw_worker_restarts", "Worker processes restarted after dying", labels=["worker"]
    )
    for index, count in restarts:
        restarted.add_metric([str(index)], count)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged.values(), restarted]))
    return generate_latest(registry)


class WorkersHttp:
    def __init__(self, workers: Sequence[WorkerView]) -> None:
        self.workers = workers
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _get(self, worker: WorkerView, path: str) -> tuple[int, str]:
        """Status and body of a worker's own side port; 0 when it cannot be asked."""
        if not worker.serving.is_set() or not worker.http_port or self._client is None:
            return 0, "not serving (starting or restarting)"
        try:
            async with self._client.get(f"http://127.0.0.1:{worker.http_port}{path}") as answer:
                return answer.status, await answer.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, f"side port unreachable: {exc or type(exc).__name__}"

    async def _metrics(self, _request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._get(w, "/metrics") for w in self.workers))
        pairs = zip(self.workers, answers, strict=True)
        texts = [(w.index, body) for w, (code, body) in pairs if code == 200]
        body = merge_metrics(texts, [(w.index, w.restarts) for w in self.workers])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        workers = {str(w.index): w.pid if w.serving.is_set() else None for w in self.workers}
        return web.json_response({"status": "alive", "workers": workers})

    async def _readyz(self, _request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._get(w, "/readyz") for w in self.workers))
        pairs = zip(self.workers, answers, strict=True)
        reasons = {str(w.index): body for w, (code, body) in pairs if code != 200}
        if reasons:
            return web.json_response({"ready": False, "workers": reasons}, status=503)
        return web.json_response({"ready": True, "workers": len(self.workers)})

    async def start(self, host: str, port: int) -> None:
        self._client = aiohttp.ClientSession(timeout=_TIMEOUT)
        self._runner, self.port = await serve_app(self.app(), host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None
