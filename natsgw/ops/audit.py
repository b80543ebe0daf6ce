"""The audit trail: one structured event per state-changing or refused call.

Each event is logged through structlog (logger ``natsgw.ops.audit``, event ``audit``) and, with
``LOKI_URL`` set, shipped to Loki's push API (``POST /loki/api/v1/push``) by one background task:

- :meth:`AuditLog.record` never waits and never raises: it appends to a bounded queue
  (``NATSGW_AUDIT_QUEUE_SIZE``) and, when the queue is full, drops the event and counts it;
- the shipper sends batches of up to ``NATSGW_LOKI_BATCH_SIZE`` lines, at least every
  ``NATSGW_LOKI_FLUSH_INTERVAL`` seconds while events wait;
- a failed push (connection error, timeout, 429 or 5xx) is retried with capped exponential backoff
  and jitter; a push Loki refuses outright (other 4xx) is dropped and counted, since resending the
  same body cannot succeed;
- on shutdown the shipper gets a few seconds to deliver what is queued; the rest is counted as
  dropped.

So a slow or dead Loki costs memory up to the queue bound and a growing ``dropped`` counter, never
a client call's latency or success. No field of an event is longer than :data:`MAX_FIELD`
characters (a caller's values are bounded before the pipeline records them; this is the backstop
that keeps one event one short line whatever a field holds).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog

from natsgw.backoff import Backoff

log = structlog.get_logger("natsgw.ops.audit")
_ship_log = structlog.get_logger("natsgw.ops.audit.loki")

PUSH_PATH = "/loki/api/v1/push"
#: Longest text field of an audit event, in characters.
MAX_FIELD = 1024
_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 30.0


class LokiShipper:
    """Batches lines into Loki pushes off the request path; bounded memory, counted drops."""

    def __init__(
        self,
        url: str,
        labels: Mapping[str, str],
        *,
        queue_size: int = 10000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        tenant: str = "",
        timeout: float = 5.0,
        backoff_cap: float = _BACKOFF_CAP,
    ) -> None:
        self.url = url.rstrip("/") + PUSH_PATH
        self.labels = dict(labels)
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.backoff = Backoff(_BACKOFF_BASE, backoff_cap)
        self._headers = {"Content-Type": "application/json"}
        if tenant:
            self._headers["X-Scope-OrgID"] = tenant
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._queue: collections.deque[tuple[int, str]] = collections.deque()
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._in_flight = 0
        self.sent = 0
        self.dropped = 0
        self.failed_pushes = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def offer(self, timestamp_ns: int, line: str) -> bool:
        """Queue one line; False (and counted) when the queue is full or shipping has stopped."""
        if self._closing or len(self._queue) >= self.queue_size:
            self.dropped += 1
            return False
        self._queue.append((timestamp_ns, line))
        self._drained.clear()
        self._pending.set()
        if len(self._queue) >= self.batch_size:
            self._full.set()
        return True

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="natsgw-audit-loki")

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            if not self._closing and len(self._queue) < self.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_interval)
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            if not self._queue:
                self._pending.clear()
            if len(self._queue) < self.batch_size:
                self._full.clear()
            if batch:
                self._in_flight = len(batch)
                await self._deliver(batch)
                self._in_flight = 0
            if not self._queue:
                self._drained.set()

    def _body(self, batch: list[tuple[int, str]]) -> bytes:
        values = [[str(ts), line] for ts, line in batch]
        return json.dumps({"streams": [{"stream": self.labels, "values": values}]}).encode()

    async def _deliver(self, batch: list[tuple[int, str]]) -> None:
        assert self._session is not None
        body = self._body(batch)
        attempt = 0
        while True:
            status: int | None = None
            reason = ""
            try:
                async with self._session.post(self.url, data=body, headers=self._headers) as resp:
                    status = resp.status
                    if status >= 300:
                        reason = (await resp.text())[:200]
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            if status is not None and 200 <= status < 300:
                self.sent += len(batch)
                return
            self.failed_pushes += 1
            if status is not None and 400 <= status < 500 and status != 429:
                self.dropped += len(batch)
                _ship_log.error(
                    "loki_push_refused", status=status, reason=reason, dropped=len(batch)
                )
                return
            delay = self.backoff.delay(attempt)
            _ship_log.warning(
                "loki_push_failed",
                status=status,
                reason=reason,
                attempt=attempt + 1,
                retry_in=delay,
            )
            attempt += 1
            await asyncio.sleep(delay)

    async def close(self, timeout: float = 3.0) -> None:
        """Deliver what is queued within ``timeout``; count the rest as dropped."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            self._pending.set()
            self._full.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), max(0.0, deadline - loop.time()))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.dropped += self._in_flight
        self._in_flight = 0
        if self._queue:
            self.dropped += len(self._queue)
            _ship_log.warning("loki_unsent_at_shutdown", dropped=len(self._queue))
            self._queue.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


class AuditLog:
    """Where the request path reports audit events; cheap, synchronous, never raises."""

    def __init__(self, shipper: LokiShipper | None = None) -> None:
        self.shipper = shipper
        self.recorded = 0

    @property
    def queue_depth(self) -> int:
        return self.shipper.depth if self.shipper is not None else 0

    @property
    def dropped(self) -> int:
        return self.shipper.dropped if self.shipper is not None else 0

    def record(self, **event: Any) -> None:
        self.recorded += 1
        for key, value in event.items():
            if isinstance(value, str) and len(value) > MAX_FIELD:
                event[key] = f"{value[:MAX_FIELD]}… ({len(value)} characters)"
        try:
            log.info("audit", **event)
            if self.shipper is not None:
                now_ns = time.time_ns()
                line = json.dumps(
                    {"event": "audit", "ts": now_ns / 1e9, **event}, default=str, sort_keys=True
                )
                self.shipper.offer(now_ns, line)
        except Exception:  # the audit trail must never fail a call
            _ship_log.exception("audit_record_failed")

    def start(self) -> None:
        if self.shipper is not None:
            self.shipper.start()

    async def close(self, timeout: float = 3.0) -> None:
        if self.shipper is not None:
            await self.shipper.close(timeout)
