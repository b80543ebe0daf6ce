"""Prometheus metrics of one gateway (its own registry, so several can live in one process).

Per call (recorded by :mod:`natsgw.pipeline.chain`):

- ``natsgw_rpc_calls_total{rpc,status}`` and ``natsgw_rpc_errors_total{rpc,status}``;
- ``natsgw_rpc_duration_seconds{rpc}`` (histogram; for streams, the stream's lifetime);
- ``natsgw_rpc_in_flight{rpc}`` — open calls; for Subscribe, QueueSubscribe, Consume and
  KVWatch this is the number of active subscriptions / consumers / watches;
- ``natsgw_quota_refusals_total{quota}``.

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

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from natsgw.adapter import NatsAdapter
from natsgw.ops.audit import AuditLog
from natsgw.service.fanout import FanOut
from natsgw.service.subscriptions import Mailbox, SubscriptionRegistry

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_STATES = ("CONNECTING", "CONNECTED", "RECONNECTING", "DRAINING", "CLOSED")


class MeteredSubscriptionRegistry(SubscriptionRegistry):
    """A SubscriptionRegistry that also remembers how many messages its mailboxes dropped."""

    def __init__(self, stream_limit: int = 0) -> None:
        super().__init__(stream_limit)
        self._live: set[Mailbox] = set()
        self._retired_drops = 0

    def _retire(self, box: Mailbox) -> None:
        if box in self._live:
            self._live.discard(box)
            self._retired_drops += box.dropped

    def add(self, tenant_key: str, subject: str, mailbox: Mailbox) -> None:
        super().add(tenant_key, subject, mailbox)
        self._live.add(mailbox)

    def remove(self, tenant_key: str, subject: str, mailbox: Mailbox) -> None:
        super().remove(tenant_key, subject, mailbox)
        self._retire(mailbox)

    @property
    def dropped(self) -> int:
        return self._retired_drops + sum(box.dropped for box in self._live)


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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "natsgw_rpc_calls", "Calls served, by RPC and status", ["rpc", "status"], registry=r
        )
        self.errors = Counter(
            "natsgw_rpc_errors", "Calls that ended with an error status", ["rpc", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "natsgw_rpc_duration_seconds",
            "Time from request to final status",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("natsgw_rpc_in_flight", "Calls being served", ["rpc"], registry=r)
        self.quota_refusals = Counter(
            "natsgw_quota_refusals", "Calls refused by a quota", ["quota"], registry=r
        )

        self._per_rpc: dict[str, tuple[Any, Any]] = {}
        self._per_status: dict[tuple[str, str], tuple[Any, Any]] = {}

    def started(self, rpc: str) -> None:
        children = self._per_rpc.get(rpc)
        if children is None:
            children = (self.in_flight.labels(rpc), self.latency.labels(rpc))
            self._per_rpc[rpc] = children
        children[0].inc()

    def ended(self, rpc: str, status: str, seconds: float, error: bool) -> None:
        """One call is over (label children cached: this runs on every call)."""
        in_flight, latency = self._per_rpc[rpc]
        in_flight.dec()
        latency.observe(seconds)
        key = (rpc, status)
        counters = self._per_status.get(key)
        if counters is None:
            counters = (self.calls.labels(rpc, status), self.errors.labels(rpc, status))
            self._per_status[key] = counters
        counters[0].inc()
        if error:
            counters[1].inc()

    def bind(
        self,
        adapter: NatsAdapter | None,
        subscriptions: SubscriptionRegistry,
        audit: AuditLog | None,
        fanout: FanOut | None = None,
    ) -> None:
        """Expose the gateway parts' state at scrape time."""
        self.registry.register(_StateCollector(adapter, subscriptions, audit, fanout))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
