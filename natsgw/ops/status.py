"""The operators' status page on the HTTP side port: ``/status`` (HTML), ``/status.json``.

Read-only: GET (and HEAD) only, nothing it serves changes state, and the page is a static HTML
file with plain JavaScript (``natsgw/ops/static``, no build step) that reads ``/status.json``
every 2 s. What it shows:

- the gateway: calls served, calls per second, calls and streams open, tenants tracked;
- the NATS connection: state, server, reconnects, NATS subscriptions, slow-consumer drops;
- per tenant (the same rows as the ``natsgw_tenant_*`` metrics: NATSGW_METRICS_TENANTS plus the
  NATSGW_METRICS_TENANTS_TOP busiest, the rest as ``other``): calls, calls per second, errors,
  published and delivered messages and bytes, slow-consumer drops, open streams, and from
  JetStream its streams, stored messages and bytes, consumers and consumer lag (messages not yet
  delivered, and delivered but not acknowledged).

The side port has no authentication, so tenant names appear only with
``NATSGW_STATUS_TENANT_NAMES=true`` (listed tenants are always named); otherwise each shows as a
pseudonym ``t-<hex>``, and no stream, subject or consumer name appears at all.

Serving it costs little whoever polls it: ``/status.json`` is made at most once a second, the
JetStream figures are read at most every :data:`_JETSTREAM_TTL` seconds (one stream listing per
shown tenant, for at most :data:`_MAX_STREAM_LISTS` of them, plus at most
:data:`_MAX_CONSUMER_LISTS` consumer listings), one read at a time;
rates come from samples kept here, so a page refresh does no work on the call path.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import math
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog
from aiohttp import web

from natsgw.adapter import NatsAdapter
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.adapter.types import StreamDetails
from natsgw.errors import GatewayError, NotFound
from natsgw.ops.metrics import MeteredSubscriptionRegistry, Metrics, TenantRow, tenant_rows
from natsgw.service.fanout import FanOut
from natsgw.service.jetstream import own_streams

log = structlog.get_logger("natsgw.ops.status")

#: Seconds the JetStream figures (streams, consumer lag) are reused before NATS is asked again.
_JETSTREAM_TTL = 5.0
#: Tenants whose streams one JetStream read lists (the first shown: listed, then the busiest);
#: NATSGW_METRICS_TENANTS_TOP may show up to 1000, which would be 1000 requests every TTL.
_MAX_STREAM_LISTS = 50
#: Consumer listings per JetStream read (one per stream with consumers); beyond: a note.
_MAX_CONSUMER_LISTS = 50
#: How long one JetStream read may take before the page shows what it has without it.
_JETSTREAM_TIMEOUT = 3.0
#: Rate samples: at least 1 s apart, the oldest kept is the base of "per second" figures.
_SAMPLE_EVERY = 1.0
#: ``/status.json`` is served from one snapshot for this long (the page asks every 2 s).
_SNAPSHOT_EVERY = 1.0
_SAMPLES = 30
#: The page is served with no inline script: only its own files may run.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    total: int
    per_tenant: dict[str, int]


@dataclass(slots=True)
class _StoredFigures:
    """One tenant's JetStream figures."""

    streams: int = 0
    messages: int = 0
    bytes: int = 0
    consumers: int = 0
    pending: int = 0
    ack_pending: int = 0


def _static(name: str) -> bytes:
    return resources.files("natsgw.ops").joinpath("static", name).read_bytes()


class StatusPage:
    """What ``/status`` shows, from the gateway's parts (no state of its own but rate samples
    and the cached JetStream figures)."""

    def __init__(
        self,
        metrics: Metrics,
        adapter: NatsAdapter,
        subscriptions: MeteredSubscriptionRegistry,
        fanout: FanOut | None = None,
        *,
        jetstream: bool = True,
        about: dict[str, Any] | None = None,
    ) -> None:
        self.metrics = metrics
        self.adapter = adapter
        self.subscriptions = subscriptions
        self.fanout = fanout
        self.jetstream = JetStreamAdapter(adapter, _JETSTREAM_TIMEOUT) if jetstream else None
        self.about = dict(about or {})
        self.started = time.time()
        self._samples: collections.deque[_Sample] = collections.deque(maxlen=_SAMPLES)
        self._stored: dict[str, _StoredFigures] = {}
        self._stored_at = -math.inf  # never read yet
        self._stored_note = ""
        self._reading = asyncio.Lock()
        self._making = asyncio.Lock()  # one /status.json snapshot at a time
        self._served: tuple[float, bytes] | None = None  # (monotonic time, the /status.json body)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/status", self._page)
        app.router.add_get("/status.js", self._script)
        app.router.add_get("/status.css", self._style)
        app.router.add_get("/status.json", self._json)

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(body=_static("status.html"), content_type="text/html", headers=_HEADERS)

    async def _script(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=_static("status.js"), content_type="text/javascript", headers=_HEADERS
        )

    async def _style(self, _request: web.Request) -> web.Response:
        return web.Response(body=_static("status.css"), content_type="text/css", headers=_HEADERS)

    async def _json(self, _request: web.Request) -> web.Response:
        """The snapshot, made at most once per :data:`_SNAPSHOT_EVERY` however often and however
        many at once ask (the port is unauthenticated, and with a full tenant table a snapshot
        is a few ms of the event loop that serves gRPC); one request makes it, the others wait
        for it."""
        async with self._making:
            now = time.monotonic()
            if self._served is None or now - self._served[0] >= _SNAPSHOT_EVERY:
                self._served = (now, json.dumps(await self.snapshot()).encode())
            body = self._served[1]
        return web.Response(body=body, content_type="application/json", headers=_HEADERS)

    # -- the figures ----------------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        now = time.time()
        meter = self.metrics.tenants
        rows, other = tenant_rows(meter, self.subscriptions)
        ended, open_calls = self.metrics.calls()
        base = self._sample(now, ended, [*rows, other])
        stored = await self._stored_figures(rows)
        tenants = [self._tenant(row, now, base, stored.get(row.traffic.label)) for row in rows]
        return {
            "generated_at": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(),
            "uptime_seconds": round(now - self.started, 1),
            "gateway": {
                **self.about,
                "calls": ended,
                "calls_per_second": _rate(
                    ended, base.total if base else 0, now, base, self.started
                ),
                "calls_open": open_calls,
                "streams_open": self.subscriptions.open_total(),
                "tenants_tracked": len(meter),
            },
            "nats": self._nats(),
            "tenant_names": meter.names,
            "tenants": tenants,
            "other": self._tenant(other, now, base, None),
            "jetstream_note": self._stored_note,
        }

    def _sample(self, now: float, total: int, rows: list[TenantRow]) -> _Sample | None:
        """Keep a sample (at most one a second); return the oldest, the base of the rates."""
        samples = self._samples
        if not samples or now - samples[-1].at >= _SAMPLE_EVERY:
            samples.append(_Sample(now, total, {r.traffic.label: r.traffic.calls for r in rows}))
        oldest = samples[0]
        return oldest if now - oldest.at >= _SAMPLE_EVERY / 2 else None

    def _tenant(
        self, row: TenantRow, now: float, base: _Sample | None, stored: _StoredFigures | None
    ) -> dict[str, Any]:
        t = row.traffic
        before = base.per_tenant.get(t.label, 0) if base is not None else 0
        shown: dict[str, Any] = {
            "tenant": row.name,
            "calls": t.calls,
            "calls_per_second": _rate(t.calls, before, now, base, t.since),
            "errors": t.errors,
            "published": t.published,
            "published_bytes": t.published_bytes,
            "delivered": t.delivered,
            "delivered_bytes": t.delivered_bytes,
            "dropped": t.dropped,
            "open_streams": row.open_streams,
        }
        if stored is not None:
            shown.update(
                streams=stored.streams,
                stored_messages=stored.messages,
                stored_bytes=stored.bytes,
                consumers=stored.consumers,
                consumer_pending=stored.pending,
                consumer_ack_pending=stored.ack_pending,
            )
        return shown

    def _nats(self) -> dict[str, Any]:
        adapter = self.adapter
        state = adapter.state()
        shown: dict[str, Any] = {
            "connected": adapter.connected,
            "state": state.status,
            "server": state.connected_url,
            "reconnects": state.reconnects,
            "slow_consumer_drops": self.subscriptions.dropped,
            "nats_subscriptions": self.fanout.subscriptions if self.fanout is not None else 0,
        }
        if adapter.connected:
            try:
                facts = adapter.facts()
            except GatewayError:
                return shown
            shown.update(
                server_name=facts.server_name, version=facts.version, jetstream=facts.jetstream
            )
        return shown

    async def _stored_figures(self, rows: list[TenantRow]) -> dict[str, _StoredFigures]:
        """The shown tenants' JetStream figures, read at most every few seconds."""
        if self.jetstream is None or not self.adapter.connected:
            return {}
        async with self._reading:  # one read at a time; the others use its result
            # Within the TTL nothing is read, even for a tenant new to the shown rows (it has
            # no JetStream figures until the next read) or after a failed read: however the
            # top tenants churn and whoever polls, NATS is asked at most once per TTL.
            if time.monotonic() - self._stored_at >= _JETSTREAM_TTL:
                try:
                    read = await asyncio.wait_for(self._read(rows), _JETSTREAM_TIMEOUT)
                    self._stored, self._stored_note = read
                except (GatewayError, TimeoutError) as exc:
                    # The message names NATS streams (tenant names): logs only, never the page.
                    text = exc.message if isinstance(exc, GatewayError) else "timed out"
                    why = exc.status.name if isinstance(exc, GatewayError) else "timed out"
                    self._stored_note = f"JetStream figures unavailable ({why})"
                    log.info("status_jetstream_unavailable", error=text)
                self._stored_at = time.monotonic()
        return self._stored

    async def _read(self, rows: list[TenantRow]) -> tuple[dict[str, _StoredFigures], str]:
        """The first :data:`_MAX_STREAM_LISTS` shown tenants' streams (one listing each, as
        ListStreams reads them), and the consumers of at most :data:`_MAX_CONSUMER_LISTS` of
        those streams that have any; with a note when some were left out."""
        assert self.jetstream is not None
        js = self.jetstream
        shown = [row.traffic for row in rows if row.traffic.ns is not None]
        some_tenants = len(shown) > _MAX_STREAM_LISTS
        shown = shown[:_MAX_STREAM_LISTS]
        listings = await asyncio.gather(
            *(own_streams(js, traffic.ns) for traffic in shown if traffic.ns is not None)
        )
        found: dict[str, _StoredFigures] = {}
        owned: list[tuple[_StoredFigures, StreamDetails]] = []
        for traffic, streams in zip(shown, listings, strict=True):
            figures = found[traffic.label] = _StoredFigures()
            for details in streams:
                state = details.state
                figures.streams += 1
                figures.messages += state.messages
                figures.bytes += state.bytes
                figures.consumers += state.consumer_count
                if state.consumer_count:
                    owned.append((figures, details))
        for figures, details in owned[:_MAX_CONSUMER_LISTS]:
            try:
                consumers = await js.list_consumers(details.spec.name)
            except NotFound:  # deleted since it was listed: no lag to show, the rest stands
                continue
            for consumer in consumers:
                figures.pending += consumer.state.num_pending
                figures.ack_pending += consumer.state.num_ack_pending
        notes = [
            *(["JetStream figures of some tenants left out"] if some_tenants else []),
            *(
                ["consumer lag of some streams left out"]
                if len(owned) > _MAX_CONSUMER_LISTS
                else []
            ),
        ]
        return found, "; ".join(notes)


def _rate(count: int, base_count: int, now: float, base: _Sample | None, since: float) -> float:
    """Per second since the base sample; before there is one old enough, since ``since`` (the
    gateway's start, or when the tenant was first seen)."""
    if base is not None:
        # Never below 0: a row's count can fall (a tenant left ``other`` for the top rows, or
        # was dropped from the table and seen again), which is no negative traffic.
        return max(0.0, round((count - base_count) / (now - base.at), 2))
    return round(count / max(1.0, now - since), 2)
