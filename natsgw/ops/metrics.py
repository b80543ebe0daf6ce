"""Prometheus metrics of one gateway (its own registry, so several can live in one process).

Per call (recorded by :mod:`natsgw.pipeline.chain`):

- ``natsgw_rpc_calls_total{rpc,status}`` and ``natsgw_rpc_errors_total{rpc,status}``;
- ``natsgw_rpc_duration_seconds{rpc}`` (histogram; for streams, the stream's lifetime);
- ``natsgw_rpc_in_flight{rpc}`` — open calls; for Subscribe, QueueSubscribe, Consume and
  KVWatch this is the number of active subscriptions / consumers / watches;
- ``natsgw_quota_refusals_total{quota}``.

Per tenant (:class:`TenantMeter`: one dict lookup per call, no label objects), exposed for the
``NATSGW_METRICS_TENANTS`` tenants and the ``NATSGW_METRICS_TENANTS_TOP`` busiest others, the rest
summed as ``tenant="other"`` (names only with ``NATSGW_STATUS_TENANT_NAMES=true``, else stable
pseudonyms ``t-<hex>``). ``other`` is not a monotonic counter: a tenant moving into the top N
takes its counts out of it (Prometheus sees a reset); totals are in ``natsgw_rpc_*``:

- ``natsgw_tenant_calls_total{tenant}``, ``natsgw_tenant_errors_total{tenant}``;
- ``natsgw_tenant_published_messages_total{tenant}`` / ``..._published_bytes_total`` (successful
  Publish, PublishBatch, Request, PublishToStream(Batch): messages and payload bytes);
- ``natsgw_tenant_delivered_messages_total{tenant}`` / ``..._delivered_bytes_total`` (responses
  the gateway wrote on the tenant's Subscribe, QueueSubscribe and Consume streams);
- ``natsgw_tenant_dropped_messages_total{tenant}`` (slow-consumer drops),
  ``natsgw_tenant_open_streams{tenant}``.

Read at scrape time from the gateway's parts:

- ``natsgw_subscriptions_active``, ``natsgw_subscription_dropped_messages_total``;
- ``natsgw_subscription_nats_subscriptions`` (NATS subscriptions behind them: identical
  subscriptions share one), ``natsgw_streaming_calls_refused_total`` (NATSGW_QUOTA_STREAMING_CALLS);
- ``natsgw_nats_connected``, ``natsgw_nats_connection_state{state}``,
  ``natsgw_nats_reconnects_total``;
- ``natsgw_audit_events_total``, ``natsgw_audit_queue_depth``, ``natsgw_audit_dropped_total``,
  ``natsgw_audit_sent_total``.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from natsgw.adapter import NatsAdapter
from natsgw.config import Settings
from natsgw.ops.audit import AuditLog
from natsgw.pipeline.quotas import tenant_label
from natsgw.service.fanout import FanOut
from natsgw.service.subscriptions import Mailbox, SubscriptionRegistry
from natsgw.tenancy import Namespace

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Bucket labels as prometheus_client writes them (``le="0.005"``, ..., ``le="+Inf"``).
_BUCKET_LABELS = (*(repr(float(b)) for b in _LATENCY_BUCKETS), "+Inf")  # as Go prints them
_STATES = ("CONNECTING", "CONNECTED", "RECONNECTING", "DRAINING", "CLOSED")


def _one_message(request: Any) -> tuple[int, int]:
    return 1, len(request.data)


def _each_message(request: Any) -> tuple[int, int]:
    messages = request.messages
    return len(messages), sum(len(message.data) for message in messages)


#: RPCs that publish: rpc -> (messages, payload bytes) of a request that succeeded.
_PUBLISHED: dict[str, Callable[[Any], tuple[int, int]]] = {
    "Publish": _one_message,
    "Request": _one_message,
    "PublishToStream": _one_message,
    "PublishBatch": _each_message,
    "PublishToStreamBatch": _each_message,
}


class TenantTraffic:
    """One tenant's counters since this gateway first saw it (plain ints: the event loop's
    thread is the only writer and reader)."""

    __slots__ = (
        "calls",
        "delivered",
        "delivered_bytes",
        "dropped",
        "errors",
        "label",
        "ns",
        "published",
        "published_bytes",
        "since",
    )

    def __init__(self, label: str, ns: Namespace | None = None) -> None:
        self.label = label
        self.ns = ns
        self.since = time.time()
        self.calls = self.errors = 0
        self.published = self.published_bytes = 0
        self.delivered = self.delivered_bytes = 0
        self.dropped = 0

    @property
    def activity(self) -> int:
        """What ranks a tenant among the busiest: calls plus messages either way."""
        return self.calls + self.published + self.delivered

    def add(self, other: TenantTraffic) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.published += other.published
        self.published_bytes += other.published_bytes
        self.delivered += other.delivered
        self.delivered_bytes += other.delivered_bytes
        self.dropped += other.dropped


class TenantMeter:
    """Per-tenant counters, bounded: at most ``capacity`` tenants (the least recently active
    beyond that are folded into :attr:`evicted`), and only a few of them shown by name.

    Who is shown (:meth:`shown`): the ``listed`` tenant labels (``user:ID``/``organization:ID``,
    as in the quotas file) and the ``top`` most active others; everyone else is summed as
    ``other``. Names appear only with ``names`` (NATSGW_STATUS_TENANT_NAMES): the side port has
    no authentication, so by default a tenant shows as ``t-`` and 10 hex digits of a keyed
    hash (stable while the process runs; listed tenants keep their names, an operator asked
    for them).
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        top: int = 10,
        listed: Collection[str] = (),
        names: bool = False,
        pseudonym_key: bytes = b"",
    ) -> None:
        self.capacity = max(1, capacity)
        self.top = top
        self.listed = frozenset(listed)
        self.names = names
        self._entries: OrderedDict[str, TenantTraffic] = OrderedDict()
        #: Totals of tenants dropped from the table (still in ``other``, counters never go down).
        self.evicted = TenantTraffic("other")
        self._key = pseudonym_key or os.urandom(16)

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantMeter:
        """Pseudonyms are keyed by NATSGW_ACK_TOKEN_SECRET when set (the same on every worker
        and replica, and across restarts), else by a random key of this process."""
        secret = settings.ack_token_secret
        key = (
            hashlib.blake2b(secret.encode(), person=b"natsgw-tenants", digest_size=32).digest()
            if secret
            else b""
        )
        return cls(
            capacity=settings.tenant_stats_max,
            top=settings.metrics_tenants_top,
            listed=settings.metrics_tenants,
            names=settings.status_tenant_names,
            pseudonym_key=key,
        )

    def entry(self, ns: Namespace) -> TenantTraffic:
        """The tenant's counters (hot: one lookup and an O(1) move for a known tenant)."""
        key = ns.key
        entries = self._entries
        found = entries.get(key)
        if found is not None:
            entries.move_to_end(key)
            return found
        found = entries[key] = TenantTraffic(tenant_label(ns.tenant), ns)
        if len(entries) > self.capacity:
            _, oldest = entries.popitem(last=False)
            self.evicted.add(oldest)
        return found

    def find(self, tenant_key: str) -> TenantTraffic | None:
        return self._entries.get(tenant_key)

    def __len__(self) -> int:
        return len(self._entries)

    def display(self, label: str) -> str:
        """What the side port calls the tenant: its label, or a pseudonym."""
        if self.names or label in self.listed:
            return label
        digest = hashlib.blake2b(label.encode(), key=self._key, digest_size=5).hexdigest()
        return f"t-{digest}"

    def shown(self) -> tuple[list[TenantTraffic], TenantTraffic]:
        """The tenants shown by name (listed first, then the busiest), and the rest summed."""
        entries = list(self._entries.values())
        listed = [e for e in entries if e.label in self.listed]
        rest = [e for e in entries if e.label not in self.listed]
        top = heapq.nlargest(self.top, rest, key=lambda e: e.activity) if self.top > 0 else []
        chosen = {id(e) for e in top}
        other = TenantTraffic("other")
        other.add(self.evicted)
        for e in rest:
            if id(e) not in chosen:
                other.add(e)
        return [*listed, *top], other


class MeteredSubscriptionRegistry(SubscriptionRegistry):
    """A SubscriptionRegistry that also remembers how many messages its mailboxes dropped, in
    total and per tenant."""

    def __init__(self, stream_limit: int = 0) -> None:
        super().__init__(stream_limit)
        self._live: dict[Mailbox, str] = {}
        self._retired_drops = 0
        #: Where a closed stream's drops are added per tenant (set by :meth:`Metrics.bind`).
        self.tenants: TenantMeter | None = None

    def _retire(self, box: Mailbox) -> None:
        tenant_key = self._live.pop(box, None)
        if tenant_key is not None:
            self._retired_drops += box.dropped
            entry = self.tenants.find(tenant_key) if self.tenants is not None else None
            if entry is not None:
                entry.dropped += box.dropped
            elif self.tenants is not None:
                self.tenants.evicted.dropped += box.dropped

    def add(self, tenant_key: str, subject: str, mailbox: Mailbox) -> None:
        super().add(tenant_key, subject, mailbox)
        self._live[mailbox] = tenant_key

    def remove(self, tenant_key: str, subject: str, mailbox: Mailbox) -> None:
        super().remove(tenant_key, subject, mailbox)
        self._retire(mailbox)

    @property
    def dropped(self) -> int:
        return self._retired_drops + sum(box.dropped for box in self._live)

    def open_total(self) -> int:
        """Streaming calls open, all tenants together."""
        return sum(self._open.values())

    def live_drops(self) -> dict[str, int]:
        """Drops of the streams still open, per tenant key."""
        found: dict[str, int] = {}
        for box, tenant_key in self._live.items():
            if box.dropped:
                found[tenant_key] = found.get(tenant_key, 0) + box.dropped
        return found


class _StateCollector(Collector):
    def __init__(
        self,
        adapter: NatsAdapter | None,
        subscriptions: SubscriptionRegistry,
        audit: AuditLog | None,
        fanout: FanOut | None = None,
    ) -> None:
        self.adapter = adapter
        self.subscriptions = subscriptions
        self.audit = audit
        self.fanout = fanout

    def collect(self) -> Iterator[Metric]:
        subs = self.subscriptions
        yield GaugeMetricFamily(
            "natsgw_subscriptions_active",
            "Subscribe/QueueSubscribe streams currently open",
            value=subs.active,
        )
        yield CounterMetricFamily(
            "natsgw_streaming_calls_refused",
            "Streaming calls refused: the tenant had NATSGW_QUOTA_STREAMING_CALLS open",
            value=subs.refused,
        )
        if self.fanout is not None:
            yield GaugeMetricFamily(
                "natsgw_subscription_nats_subscriptions",
                "NATS subscriptions behind the open streams (identical ones share one)",
                value=self.fanout.subscriptions,
            )
        if isinstance(subs, MeteredSubscriptionRegistry):
            yield CounterMetricFamily(
                "natsgw_subscription_dropped_messages",
                "Messages dropped because a subscriber's buffer was full",
                value=subs.dropped,
            )
        if self.adapter is not None:
            state = self.adapter.state()
            yield GaugeMetricFamily(
                "natsgw_nats_connected",
                "1 while the NATS connection is up",
                value=1 if self.adapter.connected else 0,
            )
            family = GaugeMetricFamily(
                "natsgw_nats_connection_state",
                "The NATS connection's state (1 for the current one)",
                labels=["state"],
            )
            for name in _STATES:
                family.add_metric([name], 1 if state.status == name else 0)
            yield family
            yield CounterMetricFamily(
                "natsgw_nats_reconnects", "NATS reconnections", value=state.reconnects
            )
        if self.audit is not None:
            yield CounterMetricFamily(
                "natsgw_audit_events", "Audit events recorded", value=self.audit.recorded
            )
            yield GaugeMetricFamily(
                "natsgw_audit_queue_depth",
                "Audit events waiting to be shipped to Loki",
                value=self.audit.queue_depth,
            )
            yield CounterMetricFamily(
                "natsgw_audit_dropped",
                "Audit events not delivered to Loki (queue full, refused, or unsent at shutdown)",
                value=self.audit.dropped,
            )
            sent = self.audit.shipper.sent if self.audit.shipper is not None else 0
            yield CounterMetricFamily(
                "natsgw_audit_sent", "Audit events delivered to Loki", value=sent
            )


class _RpcFamilies(Collector):
    """``natsgw_rpc_*`` kept as plain numbers, turned into the same families at scrape time.

    Why not prometheus_client's labelled children: every update takes a lock (four or five per
    call, ~5 us of a unary call's CPU). These numbers are only touched from the event loop's
    thread (calls and scrapes alike), so they need none. The exposition is the one
    prometheus_client writes for Counter/Histogram/Gauge, ``_created`` samples included.
    """

    def __init__(self) -> None:
        #: rpc -> [calls open, [observations per bucket (not cumulative)..., +Inf], sum, created]
        self.per_rpc: dict[str, list[Any]] = {}
        #: (rpc, status) -> [calls, errors, created]
        self.per_status: dict[tuple[str, str], list[Any]] = {}

    def rpc(self, rpc: str) -> list[Any]:
        entry = [0, [0] * (len(_LATENCY_BUCKETS) + 1), 0.0, time.time()]
        self.per_rpc[rpc] = entry
        return entry

    def status(self, rpc: str, status: str) -> list[Any]:
        entry = [0, 0, time.time()]
        self.per_status[(rpc, status)] = entry
        return entry

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "natsgw_rpc_calls", "Calls served, by RPC and status", labels=["rpc", "status"]
        )
        errors = CounterMetricFamily(
            "natsgw_rpc_errors", "Calls that ended with an error status", labels=["rpc", "status"]
        )
        for (rpc, status), (count, failed, created) in list(self.per_status.items()):
            calls.add_metric([rpc, status], count, created=created)
            errors.add_metric([rpc, status], failed, created=created)
        latency = HistogramMetricFamily(
            "natsgw_rpc_duration_seconds", "Time from request to final status", labels=["rpc"]
        )
        in_flight = GaugeMetricFamily("natsgw_rpc_in_flight", "Calls being served", labels=["rpc"])
        for rpc, (open_calls, counts, total, created) in list(self.per_rpc.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(_BUCKET_LABELS, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([rpc], buckets, total)
            latency.samples.append(
                Sample("natsgw_rpc_duration_seconds_created", {"rpc": rpc}, created)
            )
            in_flight.add_metric([rpc], open_calls)
        yield calls
        yield errors
        yield latency
        yield in_flight


#: natsgw_tenant_<name>_total counters: name -> help text.
_TENANT_COUNTERS = (
    ("calls", "Calls the tenant made"),
    ("errors", "The tenant's calls that ended with an error status"),
    ("published_messages", "Messages the tenant published (successful calls)"),
    ("published_bytes", "Payload bytes of the messages the tenant published"),
    ("delivered_messages", "Responses written on the tenant's Subscribe/Consume streams"),
    ("delivered_bytes", "Bytes written on the tenant's Subscribe/Consume streams"),
    ("dropped_messages", "Messages dropped because the tenant's reader was too slow"),
)


class TenantRow:
    """One line of the per-tenant view: a shown tenant, or ``other`` (everyone else)."""

    __slots__ = ("name", "open_streams", "traffic")

    def __init__(self, name: str, traffic: TenantTraffic, open_streams: int) -> None:
        self.name = name
        self.traffic = traffic
        self.open_streams = open_streams

    def values(self) -> tuple[int, ...]:
        """In the order of :data:`_TENANT_COUNTERS`."""
        t = self.traffic
        return (
            t.calls,
            t.errors,
            t.published,
            t.published_bytes,
            t.delivered,
            t.delivered_bytes,
            t.dropped,
        )


def tenant_rows(
    meter: TenantMeter, subscriptions: MeteredSubscriptionRegistry
) -> tuple[list[TenantRow], TenantRow]:
    """The shown tenants and ``other``, with open streams and the drops of open streams added
    (what metrics and the status page both show)."""
    shown, other = meter.shown()
    live = subscriptions.live_drops()
    rows = []
    shown_open = 0
    for entry in shown:
        key = entry.ns.key if entry.ns is not None else ""
        counted = TenantTraffic(entry.label, entry.ns)
        counted.add(entry)
        counted.since = entry.since
        counted.dropped += live.pop(key, 0)
        streams = subscriptions.open_streams(key)
        shown_open += streams
        rows.append(TenantRow(meter.display(entry.label), counted, streams))
    other.dropped += sum(live.values())
    rest_open = max(0, subscriptions.open_total() - shown_open)
    return rows, TenantRow("other", other, rest_open)


class _TenantFamilies(Collector):
    """``natsgw_tenant_*``: the shown tenants by name (or pseudonym), the rest as ``other``."""

    def __init__(self, tenants: TenantMeter, subscriptions: MeteredSubscriptionRegistry) -> None:
        self.tenants = tenants
        self.subscriptions = subscriptions

    def collect(self) -> Iterator[Metric]:
        rows, other = tenant_rows(self.tenants, self.subscriptions)
        families = [
            CounterMetricFamily(f"natsgw_tenant_{name}", text, labels=["tenant"])
            for name, text in _TENANT_COUNTERS
        ]
        open_streams = GaugeMetricFamily(
            "natsgw_tenant_open_streams", "The tenant's streaming calls open", labels=["tenant"]
        )
        for row in (*rows, other):
            for family, value in zip(families, row.values(), strict=True):
                family.add_metric([row.name], value)
            open_streams.add_metric([row.name], row.open_streams)
        yield from families
        yield open_streams


class Metrics:
    def __init__(self, settings: Settings | None = None) -> None:
        self.registry = CollectorRegistry()
        self._rpcs = _RpcFamilies()
        self.registry.register(self._rpcs)
        self.tenants = (
            TenantMeter.from_settings(settings) if settings is not None else TenantMeter()
        )
        self.quota_refusals = Counter(
            "natsgw_quota_refusals", "Calls refused by a quota", ["quota"], registry=self.registry
        )

    def started(self, rpc: str) -> None:
        entry = self._rpcs.per_rpc.get(rpc) or self._rpcs.rpc(rpc)
        entry[0] += 1

    def ended(self, rpc: str, status: str, seconds: float, error: bool) -> None:
        """One call is over (runs on every call: a few plain number updates)."""
        entry = self._rpcs.per_rpc[rpc]
        entry[0] -= 1
        entry[1][bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        entry[2] += seconds
        counters = self._rpcs.per_status.get((rpc, status)) or self._rpcs.status(rpc, status)
        counters[0] += 1
        if error:
            counters[1] += 1

    def calls(self) -> tuple[int, int]:
        """(calls ended, calls open) over every RPC, for the status page."""
        ended = sum(entry[0] for entry in self._rpcs.per_status.values())
        open_calls = sum(entry[0] for entry in self._rpcs.per_rpc.values())
        return ended, open_calls

    def tenant_ended(self, ns: Namespace, rpc: str, request: Any, ok: bool, failed: bool) -> None:
        """One of the tenant's calls is over (every call: one lookup, a few additions)."""
        entry = self.tenants.entry(ns)
        entry.calls += 1
        if failed:
            entry.errors += 1
        elif ok and request is not None:
            published = _PUBLISHED.get(rpc)
            if published is not None:
                count, size = published(request)
                entry.published += count
                entry.published_bytes += size

    def delivered(self, ns: Namespace | None, bodies: list[bytes]) -> None:
        """Encoded responses written on one of the tenant's streams."""
        if ns is not None:
            entry = self.tenants.entry(ns)
            entry.delivered += len(bodies)
            entry.delivered_bytes += sum(map(len, bodies))

    def bind(
        self,
        adapter: NatsAdapter | None,
        subscriptions: SubscriptionRegistry,
        audit: AuditLog | None,
        fanout: FanOut | None = None,
    ) -> None:
        """Expose the gateway parts' state at scrape time."""
        self.registry.register(_StateCollector(adapter, subscriptions, audit, fanout))
        if isinstance(subscriptions, MeteredSubscriptionRegistry):
            subscriptions.tenants = self.tenants
            self.registry.register(_TenantFamilies(self.tenants, subscriptions))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
