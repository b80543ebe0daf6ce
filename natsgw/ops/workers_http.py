"""The HTTP side port of a multi-worker gateway, served by the supervisor for all its workers.

Each worker runs the ordinary side port (natsgw.ops.http) on a private loopback port it reports
to the supervisor; ``NATSGW_HTTP_PORT`` itself is served here, so a scrape or probe sees the
whole gateway rather than whichever worker the kernel picked:

- ``/healthz``: 200 while the supervisor runs and a serving worker is alive (liveness:
  restarting the whole gateway would not help a worker that keeps dying, and would take the
  healthy ones down), listing each worker's pid (null while it is not serving) and, under
  ``unhealthy``, why a slot is not healthy (crash-looping, or its own ``/healthz`` failed, e.g.
  NATS unreachable for NATSGW_NATS_DOWN_UNHEALTHY_AFTER). 503 when every serving worker's own
  ``/healthz`` fails: the gateway as a whole cannot recover by itself, so a liveness probe
  restarts it (as it would a single gateway);
- ``/readyz``: 503 until the gateway has started (every worker served once, or its slot is
  crash-looping); then 200 while at least one worker serves and its own ``/readyz`` says ready
  (the kernel hands new connections only to listening workers, so the port serves); the body
  names the workers that are not ready (restarting, crash-looping, NATS away, ...). 503 when
  none is;
- ``/metrics``: every worker's metrics, each sample labelled ``worker="<index>"`` (sum over the
  label for gateway totals), plus the supervisor's own per worker: ``natsgw_worker_restarts``,
  ``natsgw_worker_serving``, ``natsgw_worker_crash_looping`` and
  ``natsgw_worker_metrics_scraped`` (0: that worker's samples are missing from this scrape: it
  was not serving, or did not answer within ``_METRICS_TIMEOUT``; logged when that changes),
  so a missing worker is never silently left out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from natsgw.ops.http import serve_app

log = structlog.get_logger("natsgw.ops.workers_http")

#: Probes answer within this (a worker that cannot is reported not ready).
_TIMEOUT = aiohttp.ClientTimeout(total=3.0)
#: A busy worker's /metrics may take longer than a probe; Prometheus waits 10 s by default.
_METRICS_TIMEOUT = aiohttp.ClientTimeout(total=6.0)


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
    @property
    def crash_looping(self) -> bool: ...
    @property
    def unhealthy(self) -> str: ...


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_metrics(
    texts: Sequence[tuple[int, str]],
    restarts: Sequence[tuple[int, int]],
    extra: Sequence[Metric] = (),
) -> bytes:
    """One exposition from the workers' ones (``(index, text)``), samples labelled by worker,
    plus the supervisor's restart counter and ``extra`` families."""
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
    registry.register(_Families([*merged.values(), restarted, *extra]))
    return generate_latest(registry)


def _reason(body: str) -> str:
    """The ``reason`` of a worker's failed /healthz answer (its whole body if not JSON)."""
    try:
        return str(json.loads(body).get("reason", body))[:300]
    except (ValueError, AttributeError):
        return body[:300]


def _gauge(name: str, documentation: str, values: Iterable[tuple[int, bool]]) -> Metric:
    gauge = GaugeMetricFamily(name, documentation, labels=["worker"])
    for index, value in values:
        gauge.add_metric([str(index)], 1.0 if value else 0.0)
    return gauge


class WorkersHttp:
    def __init__(
        self, workers: Sequence[WorkerView], started: Callable[[], bool] = lambda: True
    ) -> None:
        self.workers = workers
        #: Whether the supervisor has finished starting (before: not ready).
        self._started = started
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0
        #: Workers whose last /metrics was missing (logged once per change, not per scrape).
        self._missing: set[int] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _get(
        self, worker: WorkerView, path: str, timeout: aiohttp.ClientTimeout = _TIMEOUT
    ) -> tuple[int, str]:
        """Status and body of a worker's own side port; 0 when it cannot be asked."""
        if not worker.serving.is_set() or not worker.http_port or self._client is None:
            return 0, worker.unhealthy or "not serving (starting or restarting)"
        url = f"http://127.0.0.1:{worker.http_port}{path}"
        try:
            async with self._client.get(url, timeout=timeout) as answer:
                return answer.status, await answer.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, f"side port unreachable: {exc or type(exc).__name__}"

    async def _metrics(self, _request: web.Request) -> web.Response:
        workers = self.workers
        answers = await asyncio.gather(
            *(self._get(w, "/metrics", _METRICS_TIMEOUT) for w in workers)
        )
        texts = [
            (w.index, body) for w, (code, body) in zip(workers, answers, strict=True) if code == 200
        ]
        scraped = {index for index, _ in texts}
        self._note_missing(workers, answers, scraped)
        extra = [
            _gauge(
                "natsgw_worker_serving",
                "1 while the worker in this slot serves",
                ((w.index, w.serving.is_set()) for w in workers),
            ),
            _gauge(
                "natsgw_worker_crash_looping",
                "1 while this slot's workers keep dying soon after start (restarted with backoff)",
                ((w.index, w.crash_looping) for w in workers),
            ),
            _gauge(
                "natsgw_worker_metrics_scraped",
                "1 when this worker's own samples are in this scrape, 0 when they are missing",
                ((w.index, w.index in scraped) for w in workers),
            ),
        ]
        body = merge_metrics(texts, [(w.index, w.restarts) for w in workers], extra)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _note_missing(
        self,
        workers: Sequence[WorkerView],
        answers: Sequence[tuple[int, str]],
        scraped: set[int],
    ) -> None:
        """Log a worker's metrics going missing, and coming back, once each."""
        for worker, (code, body) in zip(workers, answers, strict=True):
            if worker.index not in scraped and worker.index not in self._missing:
                self._missing.add(worker.index)
                reason = body[:200] if code == 0 else f"status {code}"
                log.warning("worker_metrics_missing", worker=worker.index, reason=reason)
            elif worker.index in scraped and worker.index in self._missing:
                self._missing.discard(worker.index)
                log.info("worker_metrics_back", worker=worker.index)

    async def _healthz(self, _request: web.Request) -> web.Response:
        serving = [w for w in self.workers if w.serving.is_set()]
        answers = await asyncio.gather(*(self._get(w, "/healthz") for w in serving))
        failed = {
            str(w.index): _reason(body)
            for w, (code, body) in zip(serving, answers, strict=True)
            if code == 503
        }
        workers = {str(w.index): w.pid if w.serving.is_set() else None for w in self.workers}
        unhealthy = {str(w.index): w.unhealthy for w in self.workers if w.unhealthy} | failed
        alive = not serving or len(failed) < len(serving)
        status = "alive" if alive else "failed"
        body = {"status": status, "workers": workers, "unhealthy": unhealthy}
        return web.json_response(body, status=200 if alive else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._get(w, "/readyz") for w in self.workers))
        pairs = list(zip(self.workers, answers, strict=True))
        reasons = {str(w.index): body for w, (code, body) in pairs if code != 200}
        ready = len(pairs) - len(reasons)
        started = self._started()
        body: dict[str, object] = {
            "ready": started and ready > 0,
            "workers": len(pairs),
            "serving": ready,
        }
        if not started:
            body["starting"] = True
        if reasons:
            body["not_ready"] = reasons
        return web.json_response(body, status=200 if body["ready"] else 503)

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
