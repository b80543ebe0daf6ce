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

import bisect
import time
from collections.abc import Iterator
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
from natsgw.ops.audit import AuditLog
from natsgw.service.fanout import FanOut
from natsgw.service.subscriptions import Mailbox, SubscriptionRegistry

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Bucket labels as prometheus_client writes them (``le="0.005"``, ..., ``le="+Inf"``).
_BUCKET_LABELS = (*(repr(float(b)) for b in _LATENCY_BUCKETS), "+Inf")  # as Go prints them
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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._rpcs = _RpcFamilies()
        self.registry.register(self._rpcs)
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
