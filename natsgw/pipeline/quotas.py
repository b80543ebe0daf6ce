"""Per-tenant quotas, enforced before a handler runs (so they hold whatever the handler does).

Limits (0 = unlimited) come from ``NATSGW_QUOTA_*`` and, per tenant, from an optional JSON file
``NATSGW_QUOTAS_FILE``::

    {"default": {"streams": 10, "publish_rate": 200},
     "tenants": {"user:alice": {"streams": 50}, "organization:acme": {"kv_buckets": 100}}}

Keys: ``streams``, ``consumers``, ``kv_buckets``, ``object_buckets``, ``max_bytes`` (per stream or
bucket), ``publish_rate`` (messages per second), ``publish_burst`` (default: one second's worth).

How each is enforced, from the RPC's :class:`Cost` in :mod:`natsgw.pipeline.policy` and its
decoded request (which is never changed; a filled-in byte limit goes to the handler as a copy):

- creating a stream / consumer / KV bucket / object bucket that does not exist yet, when the tenant
  already has its quota of them, is RESOURCE_EXHAUSTED naming the quota. Creations of one tenant
  are serialized within this process, so concurrent calls cannot overshoot here (several gateway
  replicas could, by at most one per replica).
- ``max_bytes``: a stream or bucket configuration above the limit is refused; one without a limit
  (0, negative, or no config at all on UpdateStream) is given the limit; a bucket a call creates
  implicitly (first KV/Object put) is created with it (the admission's ``byte_cap``, which the
  handler reads through :meth:`natsgw.pipeline.call.Call.capped_bytes`), so a first upload
  can neither exceed it nor, by failing, leave an uncapped bucket behind; and an existing stream
  or bucket found without it (made before the quota was set) is capped before the call runs.
- consumers: one created without a name is always a new one, and counts like any other.
- publishes (Publish, PublishBatch, Request, PublishToStream, PublishToStreamBatch, …) draw from a
  token bucket per tenant; a batch draws one token per message.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

import structlog

from natsgw.adapter import NatsAdapter
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.adapter.kv import stream_name as kv_stream_name
from natsgw.adapter.objects import stream_name as object_stream_name
from natsgw.config import ConfigError, Settings
from natsgw.errors import ResourceExhausted
from natsgw.tenancy import Namespace, Tenant, TenantKind

log = structlog.get_logger("natsgw.pipeline.quotas")

#: How long a stream or bucket seen to exist is assumed to still exist (skips a lookup per put).
_EXISTS_TTL = 5.0
_MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    streams: int = 0
    consumers: int = 0
    kv_buckets: int = 0
    object_buckets: int = 0
    max_bytes: int = 0
    publish_rate: float = 0.0
    publish_burst: int = 0

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    @property
    def burst(self) -> float:
        return float(self.publish_burst or max(1.0, self.publish_rate))


_ENV_NAMES = {
    "streams": "NATSGW_QUOTA_STREAMS",
    "consumers": "NATSGW_QUOTA_CONSUMERS",
    "kv_buckets": "NATSGW_QUOTA_KV_BUCKETS",
    "object_buckets": "NATSGW_QUOTA_OBJECT_BUCKETS",
    "max_bytes": "NATSGW_QUOTA_MAX_BYTES",
    "publish_rate": "NATSGW_QUOTA_PUBLISH_RATE",
}


def _limits_from(doc: Any, base: Limits, where: str) -> Limits:
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must be an object")
    known = {f.name for f in fields(Limits)}
    changes: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in known:
            raise ValueError(f"{where}: unknown quota {key!r} (known: {', '.join(sorted(known))})")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{where}.{key} must be a number >= 0")
        changes[key] = float(value) if key == "publish_rate" else int(value)
    return replace(base, **changes)


def tenant_label(tenant: Tenant) -> str:
    return f"{'user' if tenant.kind is TenantKind.USER else 'organization'}:{tenant.id}"


class QuotaPolicy:
    """Pure: which limits apply to which tenant."""

    def __init__(self, default: Limits, overrides: dict[str, Limits] | None = None) -> None:
        self.default = default
        self.overrides = overrides or {}

    @property
    def enabled(self) -> bool:
        return self.default.any or any(limits.any for limits in self.overrides.values())

    def limits_for(self, tenant: Tenant) -> Limits:
        return self.overrides.get(tenant_label(tenant), self.default)

    @classmethod
    def parse(cls, text: str, base: Limits, source: str = "quotas file") -> QuotaPolicy:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{source} must be a JSON object")
        default = _limits_from(doc.get("default", {}), base, f"{source}: default")
        overrides: dict[str, Limits] = {}
        tenants = doc.get("tenants", {})
        if not isinstance(tenants, dict):
            raise ValueError(f"{source}: 'tenants' must be an object")
        for label, limits in tenants.items():
            if not re.fullmatch(r"(user|organization):.+", label):
                raise ValueError(
                    f"{source}: tenant {label!r} must look like 'user:<id>' or 'organization:<id>'"
                )
            overrides[label] = _limits_from(limits, default, f"{source}: tenants[{label!r}]")
        return cls(default, overrides)

    @classmethod
    def from_settings(cls, settings: Settings) -> QuotaPolicy:
        base = Limits(
            streams=settings.quota_streams,
            consumers=settings.quota_consumers,
            kv_buckets=settings.quota_kv_buckets,
            object_buckets=settings.quota_object_buckets,
            max_bytes=settings.quota_max_bytes,
            publish_rate=settings.quota_publish_rate,
            publish_burst=settings.quota_publish_burst,
        )
        if settings.quotas_file is None:
            return cls(base)
        path = settings.quotas_file
        try:
            return cls.parse(path.read_text("utf-8"), base, str(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"NATSGW_QUOTAS_FILE={str(path)!r}: {exc}") from None


class TokenBucket:
    """Pure token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, count: float, now: float) -> float | None:
        """Take ``count`` tokens: None when granted, else the seconds until they would be there
        (``inf`` when ``count`` exceeds the burst, which no wait can satisfy)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if count <= self.tokens:
            self.tokens -= count
            return None
        if count > self.burst:
            return math.inf
        return (count - self.tokens) / self.rate


# -- what a call costs (declared per RPC in natsgw.pipeline.policy) ---------------------------


class Kind(Enum):
    STREAM = "streams"
    CONSUMER = "consumers"
    KV_BUCKET = "kv_buckets"
    OBJECT_BUCKET = "object_buckets"


def _nothing(_: Any) -> str:
    return ""


@dataclass(frozen=True, slots=True)
class Cost:
    """What quotas charge one call, read through typed accessors of its request message."""

    #: Messages the call publishes (drawn from the tenant's token bucket).
    publishes: Callable[[Any], int] | None = None
    #: The stream or bucket kind the call acts on, and its name as the tenant wrote it.
    kind: Kind | None = None
    name: Callable[[Any], str] = _nothing
    name_field: str = ""
    #: The call may create it (then it counts against the tenant's quota of that kind).
    creates: bool = False
    #: Consumers: the tenant's name of their stream.
    stream: Callable[[Any], str] = _nothing
    #: The byte limit the request asks for, and how to ask for another one (a copy: the
    #: decoded request is never changed).
    max_bytes: Callable[[Any], int] | None = None
    max_bytes_field: str = ""
    with_max_bytes: Callable[[Any, int], Any] | None = None


def nats_stream_name(ns: Namespace, kind: Kind, name: str, field: str = "") -> str:
    """The NATS stream backing a tenant's stream or bucket (raises InvalidArgument if bad)."""
    if kind is Kind.STREAM:
        return ns.stream(name, field or "stream_name")
    if kind is Kind.KV_BUCKET:
        return kv_stream_name(ns.kv_bucket(name))
    return object_stream_name(ns.object_bucket(name))


# -- enforcement --------------------------------------------------------------------------------


class Ticket:
    """A call admitted by quotas; finish it after the handler (releases the creation lock)."""

    def __init__(
        self,
        enforcer: QuotaEnforcer,
        lock: asyncio.Lock | None = None,
        cap_stream: str = "",
        cap_bytes: int = 0,
    ) -> None:
        self._enforcer = enforcer
        self._lock = lock
        self._cap_stream = cap_stream
        self._cap_bytes = cap_bytes

    async def created(self) -> None:
        """The handler succeeded: cap what it created implicitly, before the client hears."""
        if self._cap_stream and self._cap_bytes > 0:
            try:
                capped = await self._enforcer.jetstream.limit_stream_bytes(
                    self._cap_stream, self._cap_bytes
                )
            except Exception as exc:
                log.error(
                    "quota_max_bytes_not_applied",
                    stream=self._cap_stream,
                    error=str(exc) or type(exc).__name__,
                )
            else:
                if capped:
                    log.info(
                        "quota_max_bytes_applied", stream=self._cap_stream, bytes=self._cap_bytes
                    )
            self._cap_stream = ""

    def release(self) -> None:
        if self._lock is not None and self._lock.locked():
            self._lock.release()
        self._lock = None


class QuotaEnforcer:
    def __init__(
        self,
        policy: QuotaPolicy,
        adapter: NatsAdapter,
        root: str,
        *,
        on_refusal: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.adapter = adapter
        self.jetstream = JetStreamAdapter(adapter)
        self.root = root
        self._on_refusal = on_refusal
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._exists: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def _refuse(self, quota: str, message: str) -> ResourceExhausted:
        if self._on_refusal is not None:
            self._on_refusal(quota)
        return ResourceExhausted(f"quota {quota!r} exceeded: {message}")

    def _take_publish(self, ns: Namespace, limits: Limits, count: int) -> None:
        if limits.publish_rate <= 0 or count <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(ns.key)
        if bucket is None or bucket.rate != limits.publish_rate:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets.clear()  # idle buckets are full anyway: forgetting them is free
            bucket = self._buckets[ns.key] = TokenBucket(limits.publish_rate, limits.burst, now)
        wait = bucket.take(count, now)
        if wait is None:
            return
        if math.isinf(wait):
            raise self._refuse(
                "publish_rate",
                f"{count} messages in one call exceed this tenant's burst of {limits.burst:g} "
                f"(at {limits.publish_rate:g} messages/s): send smaller batches",
            )
        raise self._refuse(
            "publish_rate",
            f"this tenant may publish {limits.publish_rate:g} messages/s "
            f"(burst {limits.burst:g}); {count} more would exceed it: retry in {wait:.2f}s",
        )

    def _max_bytes(self, cost: Cost, request: Any, limit: int) -> Any:
        """The request the handler gets: refused above the limit, given the limit when unlimited
        (0, negative, or no config at all: an UpdateStream without one gets a config with it)."""
        if cost.max_bytes is None or cost.with_max_bytes is None or limit <= 0:
            return request
        requested = cost.max_bytes(request)
        if requested > limit:
            raise self._refuse(
                "max_bytes",
                f"{cost.max_bytes_field}={requested} is above this tenant's limit of {limit} bytes "
                "per stream or bucket; ask for at most that much",
            )
        if requested <= 0:  # no limit asked for: the tenant's limit applies (to a copy)
            return cost.with_max_bytes(request, limit)
        return request

    async def _exists_now(self, nats_name: str, max_bytes: int = 0) -> bool:
        """Whether the stream exists; one that does is also given the byte cap if it lacks it
        (made before the quota was set, or by a call that failed before it could be capped)."""
        seen = self._exists.get(nats_name)
        now = self._clock()
        if seen is not None and now - seen < _EXISTS_TTL:
            return True
        summary = await self.jetstream.stream_summary(nats_name)
        if summary is None:
            self._exists.pop(nats_name, None)
            return False
        uncapped = max_bytes > 0 and not 0 < summary.max_bytes <= max_bytes
        if uncapped and await self.jetstream.limit_stream_bytes(nats_name, max_bytes):
            log.info("quota_max_bytes_applied", stream=nats_name, bytes=max_bytes)
        if len(self._exists) >= _MAX_BUCKETS:
            self._exists.clear()
        self._exists[nats_name] = now
        return True

    async def _count(self, ns: Namespace, kind: Kind) -> int:
        prefix = ns.name_prefix
        if kind is Kind.KV_BUCKET:
            return len(await self.jetstream.stream_summaries((kv_stream_name(prefix),)))
        if kind is Kind.OBJECT_BUCKET:
            return len(await self.jetstream.stream_summaries((object_stream_name(prefix),)))
        streams = await self.jetstream.stream_summaries((prefix,))
        if kind is Kind.STREAM:
            return len(streams)
        return sum(s.consumers for s in streams)

    async def admit(self, cost: Cost, request: Any, ns: Namespace) -> Admission:
        """Refuse the call (ResourceExhausted naming the quota) or admit it.

        The admission carries the request the handler is to serve (a copy when a byte limit was
        filled in) and, when the call may create something, a ticket to finish afterwards.
        """
        limits = self.policy.limits_for(ns.tenant)
        if not limits.any:
            return Admission(request)
        if cost.publishes is not None:
            self._take_publish(ns, limits, cost.publishes(request))
        request = self._max_bytes(cost, request, limits.max_bytes)
        kind = cost.kind
        if kind is None or not cost.creates:
            return Admission(request)
        # A bucket this call makes (a first KV/Object put, KVCreateBucket) is made capped.
        cap = limits.max_bytes if kind in (Kind.KV_BUCKET, Kind.OBJECT_BUCKET) else 0
        name = cost.name(request)
        # An unnamed consumer is always a new one; any other creation needs its name.
        if not name and kind is not Kind.CONSUMER:
            return Admission(request, byte_cap=cap)
        limit: int = getattr(limits, kind.value)
        if limit <= 0 and limits.max_bytes <= 0:
            return Admission(request, byte_cap=cap)
        if kind is Kind.CONSUMER:
            stream_name = cost.stream(request)
            if limit <= 0 or not stream_name:
                return Admission(request)
            stream = ns.stream(stream_name)
            lock = self._locks.setdefault(ns.key, asyncio.Lock())
            await lock.acquire()
            try:
                exists = bool(name) and await self.jetstream.consumer_exists(stream, name)
                if not exists:
                    have = await self._count(ns, Kind.CONSUMER)
                    if have >= limit:
                        raise self._refuse(
                            "consumers",
                            f"this tenant has {have} of {limit} consumers; delete one first",
                        )
            except BaseException:
                lock.release()
                raise
            return Admission(request, Ticket(self, lock))
        nats_name = nats_stream_name(ns, kind, name, cost.name_field)
        if await self._exists_now(nats_name, limits.max_bytes):
            return Admission(request, byte_cap=cap)
        lock = self._locks.setdefault(ns.key, asyncio.Lock())
        await lock.acquire()
        try:
            if limit > 0 and not await self._exists_now(nats_name, limits.max_bytes):
                have = await self._count(ns, kind)
                if have >= limit:
                    noun = kind.value.replace("_", " ")
                    raise self._refuse(
                        kind.value, f"this tenant has {have} of {limit} {noun}; delete one first"
                    )
        except BaseException:
            lock.release()
            raise
        return Admission(
            request,
            Ticket(self, lock, cap_stream=nats_name, cap_bytes=limits.max_bytes),
            byte_cap=cap,
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """What quotas let through: the request to serve, the ticket to finish (if any), and the byte
    cap a bucket the call makes must be made with (0: none)."""

    request: Any
    ticket: Ticket | None = None
    byte_cap: int = 0
