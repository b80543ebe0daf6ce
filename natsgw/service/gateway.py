"""``isa.nats.NATSService``: the area services composed behind the generated grpclib base.

The gateway holds one service object per area and a route table from RPC path to the method that
serves it. :meth:`NATSGateway.__mapping__` hands each route to the call pipeline
(:mod:`natsgw.pipeline.chain`) with the RPC's row of :mod:`natsgw.pipeline.policy`; the generated
base supplies only the wire facts (request/reply types, cardinality).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpclib.const

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.auth.identity import Authenticator
from natsgw.config import Settings
from natsgw.ops.metrics import TenantMeter
from natsgw.ops.monitoring import NatsMonitor
from natsgw.pipeline.chain import Endpoint, Pipeline
from natsgw.pipeline.policy import POLICIES, SERVICE
from natsgw.service.fanout import FanOut
from natsgw.service.health import HealthService
from natsgw.service.jetstream import JetStreamService
from natsgw.service.kv import KeyValueService
from natsgw.service.messaging import MessagingService
from natsgw.service.objects import ObjectStoreService
from natsgw.service.stats import StatisticsService
from natsgw.service.subscriptions import SubscriptionRegistry


@dataclass(frozen=True, slots=True)
class Services:
    """One object per area of the API, each built from its own collaborators."""

    messaging: MessagingService
    jetstream: JetStreamService
    kv: KeyValueService
    objects: ObjectStoreService
    statistics: StatisticsService
    health: HealthService

    @classmethod
    def build(
        cls,
        settings: Settings,
        adapter: NatsAdapter,
        subscriptions: SubscriptionRegistry,
        fanout: FanOut,
        monitor: NatsMonitor,
        authenticator: Authenticator,
        tenants: TenantMeter | None = None,
    ) -> Services:
        js = JetStreamAdapter(adapter, settings.request_timeout)
        return cls(
            messaging=MessagingService(settings, adapter, subscriptions, fanout),
            jetstream=JetStreamService(settings, js, subscriptions),
            kv=KeyValueService(settings, adapter, subscriptions),
            objects=ObjectStoreService(settings, adapter),
            statistics=StatisticsService(settings, js, tenants, subscriptions),
            health=HealthService(settings, adapter, monitor, authenticator),
        )


def routes(s: Services) -> dict[str, Endpoint]:
    """Which method serves each RPC (a test checks every generated RPC has one)."""
    m, js, kv, ob = s.messaging, s.jetstream, s.kv, s.objects
    table: dict[str, Endpoint] = {
        "Publish": m.publish,
        "PublishBatch": m.publish_batch,
        "Subscribe": m.subscribe,
        "QueueSubscribe": m.queue_subscribe,
        "Unsubscribe": m.unsubscribe,
        "Request": m.request,
        "CreateStream": js.create_stream,
        "DeleteStream": js.delete_stream,
        "GetStreamInfo": js.get_stream_info,
        "ListStreams": js.list_streams,
        "UpdateStream": js.update_stream,
        "PurgeStream": js.purge_stream,
        "CreateConsumer": js.create_consumer,
        "DeleteConsumer": js.delete_consumer,
        "GetConsumerInfo": js.get_consumer_info,
        "ListConsumers": js.list_consumers,
        "PublishToStream": js.publish_to_stream,
        "PublishToStreamBatch": js.publish_to_stream_batch,
        "PullMessages": js.pull_messages,
        "AckMessage": js.ack_message,
        "AckMessages": js.ack_messages,
        "NakMessage": js.nak_message,
        "Consume": js.consume,
        # consumer control and TTL
        "UpdateConsumer": js.update_consumer,
        "PauseConsumer": js.pause_consumer,
        "ResumeConsumer": js.resume_consumer,
        "ResetConsumer": js.reset_consumer,
        "GetStatistics": s.statistics.get_statistics,
        "GetStreamStats": s.statistics.get_stream_stats,
        "KVPut": kv.kv_put,
        "KVGet": kv.kv_get,
        "KVDelete": kv.kv_delete,
        "KVKeys": kv.kv_keys,
        "KVCreate": kv.kv_create,
        "KVUpdate": kv.kv_update,
        "KVHistory": kv.kv_history,
        "KVWatch": kv.kv_watch,
        "KVCreateBucket": kv.kv_create_bucket,
        "KVDeleteBucket": kv.kv_delete_bucket,
        "KVListBuckets": kv.kv_list_buckets,
        "KVBucketStatus": kv.kv_bucket_status,
        "ObjectPut": ob.object_put,
        "ObjectGet": ob.object_get,
        "ObjectDelete": ob.object_delete,
        "ObjectList": ob.object_list,
        "ObjectPutStream": ob.object_put_stream,
        "ObjectGetStream": ob.object_get_stream,
        "HealthCheck": s.health.health_check,
    }
    return {SERVICE + rpc: endpoint for rpc, endpoint in table.items()}


class NATSGateway(pb.NatsServiceBase):
    """The generated service, served by delegation: every path goes through the pipeline."""

    def __init__(self, services: Services, pipeline: Pipeline) -> None:
        self.services = services
        self.pipeline = pipeline
        self._routes = routes(services)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            path: grpclib.const.Handler(
                self.pipeline.handler(POLICIES[path], wire.cardinality, self._routes[path]),
                wire.cardinality,
                wire.request_type,
                wire.reply_type,
            )
            for path, wire in super().__mapping__().items()
        }
