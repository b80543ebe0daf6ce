"""GetStatistics and GetStreamStats: the caller's own figures only, never other tenants'.

- ``GetStatistics``: the caller's own JetStream streams (not Key-Value or Object buckets) summed
  from NATS's stream state; the traffic fields are the caller's own, counted by this gateway
  process since it first saw the tenant (:class:`natsgw.ops.metrics.TenantMeter`):

  - ``in_msgs`` / ``in_bytes``: messages the tenant published in successful Publish,
    PublishBatch, Request, PublishToStream and PublishToStreamBatch calls, and their payload
    bytes;
  - ``out_msgs`` / ``out_bytes``: responses (and their encoded bytes) the gateway wrote on the
    tenant's Subscribe, QueueSubscribe and Consume streams (a batched Subscribe response, or
    a Consume response carrying several messages, counts once);
  - ``connections``: the tenant's streaming calls open on this gateway right now.

  They used to be the NATS server's own counters (``/varz``), which include every other
  tenant's traffic. With several gateway processes (NATSGW_WORKERS, replicas) each counts what
  it served.
- ``GetStreamStats``: ``message_rate`` is the number of messages the stream stored during the
  last ``NATSGW_STREAM_STATS_WINDOW`` seconds (default 60) divided by that window, read from
  NATS itself (the sequence of the first message stored at or after ``now - window``), so it is
  right on the first call and on every replica. ``byte_rate`` is ``message_rate`` times the
  stream's current average stored message size (NATS reports stored bytes only as a total).
"""

from __future__ import annotations

import datetime

from natsgw._generated.isa import nats as pb
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.config import Settings
from natsgw.ops.metrics import TenantMeter
from natsgw.pipeline.call import Call
from natsgw.service.jetstream import own_streams
from natsgw.service.subscriptions import SubscriptionRegistry

_INT32_MAX = 2**31 - 1


class StatisticsService:
    """Statistics of the caller's JetStream streams (same JetStream adapter as the JetStream
    service) and of the caller's own traffic through this gateway."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamAdapter,
        tenants: TenantMeter | None = None,
        subscriptions: SubscriptionRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.js = js
        self.tenants = tenants
        self.subscriptions = subscriptions

    async def get_statistics(
        self, call: Call, message: pb.GetStatisticsRequest
    ) -> pb.GetStatisticsResponse:
        ns = call.ns
        own = await own_streams(self.js, ns)
        traffic = self.tenants.find(ns.key) if self.tenants is not None else None
        streams = self.subscriptions.open_streams(ns.key) if self.subscriptions else 0
        reply = pb.GetStatisticsResponse(
            total_streams=len(own),
            total_consumers=sum(d.state.consumer_count for d in own),
            total_messages=sum(d.state.messages for d in own),
            total_bytes=sum(d.state.bytes for d in own),
            connections=min(streams, _INT32_MAX),
        )
        if traffic is not None:
            reply.in_msgs = traffic.published
            reply.in_bytes = traffic.published_bytes
            reply.out_msgs = traffic.delivered
            reply.out_bytes = traffic.delivered_bytes
        return reply

    async def get_stream_stats(
        self, call: Call, message: pb.GetStreamStatsRequest
    ) -> pb.GetStreamStatsResponse:
        name = call.ns.stream(message.stream_name)
        js = self.js
        details = await js.stream_info(name)
        state = details.state
        window = self.settings.stream_stats_window
        stored = 0
        if state.messages:
            since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=window)
            first = await js.first_seq_since(name, since)
            if first is not None and first <= state.last_seq:
                stored = state.last_seq - first + 1
        message_rate = stored / window
        average = state.bytes / state.messages if state.messages else 0.0
        return pb.GetStreamStatsResponse(
            stream_name=message.stream_name,
            messages=state.messages,
            bytes=state.bytes,
            consumer_count=state.consumer_count,
            message_rate=message_rate,
            byte_rate=message_rate * average,
        )
