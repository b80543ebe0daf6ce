"""GetStatistics and GetStreamStats.

- ``GetStatistics``: the caller's own JetStream streams (not Key-Value or Object buckets) summed
  from NATS's stream state, plus server-wide counters from the NATS monitoring endpoint
  (``/varz``: connections, in/out messages and bytes). Without a reachable monitoring endpoint
  the server counters read 0 (logged), the caller's own figures are still exact.
- ``GetStreamStats``: ``message_rate`` is the number of messages the stream stored during the
  last ``NATSGW_STREAM_STATS_WINDOW`` seconds (default 60) divided by that window, read from
  NATS itself (the sequence of the first message stored at or after ``now - window``), so it is
  right on the first call and on every replica. ``byte_rate`` is ``message_rate`` times the
  stream's current average stored message size (NATS reports stored bytes only as a total).
"""

from __future__ import annotations

import datetime

import structlog

from natsgw._generated.isa import nats as pb
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.config import Settings
from natsgw.errors import GatewayError
from natsgw.ops.monitoring import NatsMonitor
from natsgw.pipeline.call import Call
from natsgw.service.jetstream import own_streams

log = structlog.get_logger("natsgw.service.stats")


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return 0


class StatisticsService:
    """Statistics of the caller's JetStream streams (same JetStream adapter as the JetStream
    service), plus the server's counters from the monitoring endpoint."""

    def __init__(self, settings: Settings, js: JetStreamAdapter, monitor: NatsMonitor) -> None:
        self.settings = settings
        self.js = js
        self.monitor = monitor

    async def get_statistics(
        self, call: Call, message: pb.GetStatisticsRequest
    ) -> pb.GetStatisticsResponse:
        ns = call.ns
        own = await own_streams(self.js, ns)
        varz: dict[str, object] = {}
        try:
            varz = await self.monitor.varz()
        except GatewayError as exc:
            log.warning("nats_monitor_unavailable", error=exc.message)
        return pb.GetStatisticsResponse(
            total_streams=len(own),
            total_consumers=sum(d.state.consumer_count for d in own),
            total_messages=sum(d.state.messages for d in own),
            total_bytes=sum(d.state.bytes for d in own),
            connections=min(_int(varz.get("connections")), 2**31 - 1),
            in_msgs=_int(varz.get("in_msgs")),
            out_msgs=_int(varz.get("out_msgs")),
            in_bytes=_int(varz.get("in_bytes")),
            out_bytes=_int(varz.get("out_bytes")),
        )

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
