"""No tenant ever sees a NATS name: refusals provoked in every area, everything the client gets
(status message and details, answer fields, initial and trailing headers) searched for the
tenant key, the namespace prefix, KV_/OBJ_ stream names and $JS/$KV/$O subjects."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import betterproto2
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import tenant

U = Cardinality.UNARY_UNARY
S = Cardinality.UNARY_STREAM


@dataclass
class Outcome:
    rpc: str
    status: Status = Status.OK
    texts: list[str] = field(default_factory=list)
    replies: list[Any] = field(default_factory=list)


async def call(
    channel: Channel,
    rpc: str,
    request: betterproto2.Message,
    reply: type[betterproto2.Message],
    cardinality: Cardinality = U,
) -> Outcome:
    """One call; everything the client could read comes back as text."""
    out = Outcome(rpc)
    stream: Any = None
    try:
        async with channel.request(
            f"/isa.nats.NATSService/{rpc}", cardinality, type(request), reply, timeout=10
        ) as stream:
            await stream.send_message(request, end=True)
            while (message := await stream.recv_message()) is not None:
                out.replies.append(message)
                if len(out.replies) > 20:
                    break
            await stream.recv_trailing_metadata()
    except GRPCError as exc:
        out.status = exc.status
        out.texts += [exc.message or "", repr(exc.details)]
    if stream is not None:
        out.texts += [repr(stream.initial_metadata), repr(stream.trailing_metadata)]
    out.texts += [repr(r) for r in out.replies]
    return out


def leaks(ns: Namespace, text: str) -> list[str]:
    found = [
        s
        for s in (ns.key, ns.name_prefix, ns.subject_prefix, "KV_", "OBJ_", "$JS", "$KV", "$O")
        if s in text
    ]
    if re.search(r"natsgw[.-][uo][A-Za-z0-9_]*[.-]", text):
        found.append("a namespace prefix")
    return found


async def test_no_refusal_in_any_area_shows_a_nats_name(gateway: Gateway) -> None:
    user = tenant("leakcheck")
    ns = Namespace(Tenant.user(user))
    channel = Channel("127.0.0.1", gateway.port)
    stub = pb.NatsServiceStub(channel)
    sha_wrong = "0" * 64
    try:
        # Things that exist, so that refusals about them come from NATS itself.
        await stub.create_stream(
            pb.CreateStreamRequest(
                user_id=user, config=pb.StreamConfig(name="orders", subjects=["orders.>"])
            )
        )
        await stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=user,
                stream_name="orders",
                config=pb.ConsumerConfig(durable_name="worker"),
            )
        )
        await stub.publish_to_stream(
            pb.PublishToStreamRequest(user_id=user, stream_name="orders", subject="orders.1")
        )
        await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=user, bucket="cache"))
        await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="cache", key="k", value=b"v"))
        await stub.object_put(
            pb.ObjectPutRequest(user_id=user, bucket="files", object_name="a", data=b"1")
        )

        u: dict[str, Any] = {"user_id": user}
        cases: list[tuple[str, betterproto2.Message, type[betterproto2.Message], Cardinality]] = [
            # -- core ------
            ("Publish", pb.PublishRequest(**u, subject="bad subject"), pb.PublishResponse, U),
            ("Request", pb.RequestRequest(**u, subject="nobody.home"), pb.RequestResponse, U),
            (
                "PublishBatch",
                pb.PublishBatchRequest(**u, messages=[pb.NatsMessage(subject="a b")]),
                pb.PublishBatchResponse,
                U,
            ),
            (
                "Subscribe",
                pb.SubscribeRequest(**u, subject="x", queue_group="a b"),
                pb.MessageResponse,
                S,
            ),
            # -- JetStream streams ----------------------------------------------------------------
            (
                "CreateStream",
                pb.CreateStreamRequest(
                    **u, config=pb.StreamConfig(name="orders", subjects=["other.>"])
                ),
                pb.CreateStreamResponse,
                U,
            ),
            (
                "CreateStream",
                pb.CreateStreamRequest(
                    **u, config=pb.StreamConfig(name="copy", subjects=["orders.>"])
                ),
                pb.CreateStreamResponse,
                U,
            ),
            (
                "GetStreamInfo",
                pb.GetStreamInfoRequest(**u, stream_name="missing"),
                pb.GetStreamInfoResponse,
                U,
            ),
            (
                "UpdateStream",
                pb.UpdateStreamRequest(
                    **u, stream_name="missing", config=pb.StreamConfig(subjects=["m.>"])
                ),
                pb.UpdateStreamResponse,
                U,
            ),
            (
                "PurgeStream",
                pb.PurgeStreamRequest(**u, stream_name="missing"),
                pb.PurgeStreamResponse,
                U,
            ),
            (
                "DeleteStream",
                pb.DeleteStreamRequest(**u, stream_name="missing"),
                pb.DeleteStreamResponse,
                U,
            ),
            (
                "GetStreamStats",
                pb.GetStreamStatsRequest(**u, stream_name="missing"),
                pb.GetStreamStatsResponse,
                U,
            ),
            # -- JetStream consumers and messages -------------------------------------------------
            (
                "CreateConsumer",
                pb.CreateConsumerRequest(
                    **u, stream_name="missing", config=pb.ConsumerConfig(durable_name="w")
                ),
                pb.CreateConsumerResponse,
                U,
            ),
            (
                "GetConsumerInfo",
                pb.GetConsumerInfoRequest(**u, stream_name="orders", consumer_name="missing"),
                pb.GetConsumerInfoResponse,
                U,
            ),
            (
                "DeleteConsumer",
                pb.DeleteConsumerRequest(**u, stream_name="orders", consumer_name="missing"),
                pb.DeleteConsumerResponse,
                U,
            ),
            (
                "PullMessages",
                pb.PullMessagesRequest(**u, stream_name="orders", consumer_name="missing"),
                pb.PullMessagesResponse,
                U,
            ),
            (
                "Consume",
                pb.ConsumeRequest(**u, stream_name="orders", consumer_name="missing"),
                pb.ConsumeResponse,
                S,
            ),
            (
                "PublishToStream",
                pb.PublishToStreamRequest(**u, stream_name="orders", subject="elsewhere"),
                pb.PublishToStreamResponse,
                U,
            ),
            (
                "PublishToStream",
                pb.PublishToStreamRequest(
                    **u,
                    stream_name="orders",
                    subject="orders.2",
                    headers={"Nats-Expected-Last-Sequence": "999"},
                ),
                pb.PublishToStreamResponse,
                U,
            ),
            (
                "PublishToStream",
                pb.PublishToStreamRequest(**u, subject="nowhere.1"),
                pb.PublishToStreamResponse,
                U,
            ),
            (
                "PublishToStreamBatch",
                pb.PublishToStreamBatchRequest(
                    **u,
                    stream_name="orders",
                    messages=[
                        pb.StreamMessage(subject="elsewhere"),
                        pb.StreamMessage(
                            subject="orders.3", headers={"Nats-Expected-Last-Sequence": "999"}
                        ),
                    ],
                ),
                pb.PublishToStreamBatchResponse,
                U,
            ),
            (
                "AckMessage",
                pb.AckMessageRequest(**u, ack_token="not-a-token"),
                pb.AckMessageResponse,
                U,
            ),
            (
                "AckMessage",
                pb.AckMessageRequest(
                    **u, stream_name="orders", consumer_name="worker", sequence=99
                ),
                pb.AckMessageResponse,
                U,
            ),
            (
                "AckMessages",
                pb.AckMessagesRequest(**u, ack_tokens=["bad", ""]),
                pb.AckMessagesResponse,
                U,
            ),
            # -- Key-Value ------
            (
                "KVCreateBucket",
                pb.KvCreateBucketRequest(**u, bucket="cache"),
                pb.KvCreateBucketResponse,
                U,
            ),
            ("KVCreate", pb.KvCreateRequest(**u, bucket="cache", key="k"), pb.KvCreateResponse, U),
            (
                "KVUpdate",
                pb.KvUpdateRequest(**u, bucket="cache", key="k", expected_revision=99),
                pb.KvUpdateResponse,
                U,
            ),
            (
                "KVDelete",
                pb.KvDeleteRequest(**u, bucket="cache", key="k", expected_revision=99),
                pb.KvDeleteResponse,
                U,
            ),
            (
                "KVBucketStatus",
                pb.KvBucketStatusRequest(**u, bucket="missing"),
                pb.KvBucketStatusResponse,
                U,
            ),
            (
                "KVDeleteBucket",
                pb.KvDeleteBucketRequest(**u, bucket="missing"),
                pb.KvDeleteBucketResponse,
                U,
            ),
            ("KVWatch", pb.KvWatchRequest(**u, bucket="missing", key=">"), pb.KvEntry, S),
            (
                "KVHistory",
                pb.KvHistoryRequest(**u, bucket="missing", key="k"),
                pb.KvHistoryResponse,
                U,
            ),
            ("KVGet", pb.KvGetRequest(**u, bucket="cache", key="bad key"), pb.KvGetResponse, U),
            ("KVKeys", pb.KvKeysRequest(**u, bucket="missing"), pb.KvKeysResponse, U),
            # -- objects ------
            (
                "ObjectGet",
                pb.ObjectGetRequest(**u, bucket="missing", object_name="a"),
                pb.ObjectGetResponse,
                U,
            ),
            (
                "ObjectPut",
                pb.ObjectPutRequest(**u, bucket="files", object_name=""),
                pb.ObjectPutResponse,
                U,
            ),
            (
                "ObjectList",
                pb.ObjectListRequest(**u, bucket="missing"),
                pb.ObjectListResponse,
                U,
            ),
            (
                "ObjectDelete",
                pb.ObjectDeleteRequest(**u, bucket="missing", object_name="a"),
                pb.ObjectDeleteResponse,
                U,
            ),
            (
                "ObjectGetStream",
                pb.ObjectGetRequest(**u, bucket="missing", object_name="a"),
                pb.ObjectGetStreamResponse,
                S,
            ),
            # -- statistics ------
            ("GetStatistics", pb.GetStatisticsRequest(**u), pb.GetStatisticsResponse, U),
        ]
        outcomes = [await call(channel, *case) for case in cases]

        # A streamed put whose digest does not match (the store refuses it).
        async with channel.request(
            "/isa.nats.NATSService/ObjectPutStream",
            Cardinality.STREAM_UNARY,
            pb.ObjectPutStreamRequest,
            pb.ObjectPutResponse,
        ) as put:
            await put.send_message(
                pb.ObjectPutStreamRequest(
                    header=pb.ObjectPutHeader(
                        user_id=user, bucket="files", object_name="b", sha256=sha_wrong
                    ),
                    chunk=b"data",
                ),
                end=True,
            )
            digest = Outcome("ObjectPutStream")
            try:
                digest.replies.append(await put.recv_message())
                await put.recv_trailing_metadata()
            except GRPCError as exc:
                digest.status = exc.status
                digest.texts += [exc.message or "", repr(exc.details)]
            digest.texts += [repr(put.initial_metadata), repr(put.trailing_metadata)]
        outcomes.append(digest)
    finally:
        channel.close()

    found = {
        (o.rpc, i): (o.status.name, hits, o.texts)
        for i, o in enumerate(outcomes)
        if (hits := sorted({h for t in o.texts for h in leaks(ns, t)}))
    }
    assert not found, found

    # The refusals were really provoked (else this test would prove nothing).
    by_rpc: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_rpc.setdefault(o.rpc, []).append(o)
    refused = [o for o in outcomes if o.status is not Status.OK]
    assert len(refused) >= 30, [(o.rpc, o.status.name) for o in outcomes]
    [duplicate] = by_rpc["KVCreateBucket"]
    assert duplicate.status is Status.ALREADY_EXISTS
    assert "cache" in duplicate.texts[0], duplicate.texts
    [batch] = by_rpc["PublishToStreamBatch"]
    results = batch.replies[0].results
    assert [r.success for r in results] == [False, False] and all(r.error for r in results)
    assert by_rpc["ObjectPutStream"][0].status is not Status.OK
