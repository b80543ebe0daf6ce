"""What each RPC is, written down once: one :class:`Policy` row per RPC path.

The call pipeline (:mod:`natsgw.pipeline.chain`) reads the row of the call it serves; nothing
derives behaviour from how an RPC is spelled. A unit test fails when the generated service mapping
has an RPC without a row here.

Columns:

- ``changes`` — the call changes state in NATS (or the gateway); read-only calls are ``False``.
- ``audit`` — :class:`Audit`: control-plane changes are always audited; data-plane writes
  (publishes, acks, KV/object writes) only when refused or failed, unless
  ``NATSGW_AUDIT_DATA_PLANE=true``; reads only when refused or failed.
- ``cost`` — the :class:`~natsgw.pipeline.quotas.Cost` quotas charge (publishes, what it may
  create, which size it asks for), read from typed request fields.
- ``idempotent`` — repeating the call after an unknown outcome leaves the same state, so a client
  may retry it on UNAVAILABLE/DEADLINE_EXCEEDED.
- ``public`` — needs no identity and has no namespace (HealthCheck).
- ``scope`` — where the request carries ``user_id``/``organization_id``/``scope`` (the header of
  a streamed put); ``None`` means the request itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from natsgw._generated.isa import nats as pb
from natsgw.pipeline.quotas import Cost, Kind

SERVICE = "/isa.nats.NATSService/"


class Audit(enum.Enum):
    #: Every outcome is an audit event (control-plane changes).
    ALWAYS = "always"
    #: Refusals and failures always; successes only with NATSGW_AUDIT_DATA_PLANE=true.
    DATA_PLANE = "data-plane"
    #: Refusals and failures only (reads).
    REFUSALS = "refusals"


@dataclass(frozen=True, slots=True)
class Policy:
    rpc: str
    changes: bool
    audit: Audit
    cost: Cost | None = None
    idempotent: bool = False
    public: bool = False
    scope: Callable[[Any], Any] | None = None


def _read(rpc: str, *, idempotent: bool = True, **kw: Any) -> Policy:
    return Policy(rpc, changes=False, audit=Audit.REFUSALS, idempotent=idempotent, **kw)


def _data(rpc: str, **kw: Any) -> Policy:
    return Policy(rpc, changes=True, audit=Audit.DATA_PLANE, **kw)


def _control(rpc: str, **kw: Any) -> Policy:
    return Policy(rpc, changes=True, audit=Audit.ALWAYS, **kw)


# -- request accessors quotas use (typed, per request message) ----------------------------------


def _one(_: object) -> int:
    return 1


def _count(request: pb.PublishBatchRequest | pb.PublishToStreamBatchRequest) -> int:
    return len(request.messages)


def _bucket(request: Any) -> str:
    return str(request.bucket)


def _put_header(request: pb.ObjectPutStreamRequest) -> pb.ObjectPutHeader | None:
    return request.header


def _put_stream_bucket(request: pb.ObjectPutStreamRequest) -> str:
    return request.header.bucket if request.header is not None else ""


def _stream_config_name(request: pb.CreateStreamRequest) -> str:
    return request.config.name if request.config is not None else ""


def _stream_name(request: pb.UpdateStreamRequest | pb.CreateConsumerRequest) -> str:
    return request.stream_name


def _consumer_name(request: pb.CreateConsumerRequest) -> str:
    config = request.config
    return (config.durable_name or config.name) if config is not None else ""


def _config_max_bytes(request: pb.CreateStreamRequest | pb.UpdateStreamRequest) -> int:
    return request.config.max_bytes if request.config is not None else 0


def _with_config_max_bytes(request: Any, limit: int) -> Any:
    return replace(request, config=replace(request.config or pb.StreamConfig(), max_bytes=limit))


def _bucket_max_bytes(request: pb.KvCreateBucketRequest) -> int:
    return request.max_bytes


def _with_bucket_max_bytes(request: pb.KvCreateBucketRequest, limit: int) -> Any:
    return replace(request, max_bytes=limit)


_PUBLISH_ONE = Cost(publishes=_one)
_PUBLISH_EACH = Cost(publishes=_count)
_KV_WRITE = Cost(kind=Kind.KV_BUCKET, name=_bucket, creates=True)
_OBJECT_WRITE = Cost(kind=Kind.OBJECT_BUCKET, name=_bucket, creates=True)

_ROWS = (
    # -- core messaging ---------------------------------------------------------------------------
    _data("Publish", cost=_PUBLISH_ONE),
    _data("PublishBatch", cost=_PUBLISH_EACH),
    _data("Request", cost=_PUBLISH_ONE),
    _read("Subscribe"),
    _read("QueueSubscribe"),
    _data("Unsubscribe", idempotent=True),
    # -- JetStream streams ----------------------------------------------------------------------
    _control(
        "CreateStream",
        idempotent=True,
        cost=Cost(
            kind=Kind.STREAM,
            name=_stream_config_name,
            name_field="config.name",
            creates=True,
            max_bytes=_config_max_bytes,
            max_bytes_field="config.max_bytes",
            with_max_bytes=_with_config_max_bytes,
        ),
    ),
    _control(
        "UpdateStream",
        idempotent=True,
        cost=Cost(
            kind=Kind.STREAM,
            name=_stream_name,
            name_field="stream_name",
            max_bytes=_config_max_bytes,
            max_bytes_field="config.max_bytes",
            with_max_bytes=_with_config_max_bytes,
        ),
    ),
    _control("DeleteStream"),
    _control("PurgeStream"),
    _read("GetStreamInfo"),
    _read("ListStreams"),
    # -- JetStream consumers ----------------------------------------------------------------------
    _control(
        "CreateConsumer",
        idempotent=True,
        cost=Cost(kind=Kind.CONSUMER, name=_consumer_name, stream=_stream_name, creates=True),
    ),
    _control("DeleteConsumer"),
    _read("GetConsumerInfo"),
    _read("ListConsumers"),
    # consumer control: changes to an existing consumer, repeatable with the same end
    _control("UpdateConsumer", idempotent=True),
    _control("PauseConsumer", idempotent=True),
    _control("ResumeConsumer", idempotent=True),
    _control("ResetConsumer", idempotent=True),
    # -- JetStream messages -----------------------------------------------------------------------
    _data("PublishToStream", cost=_PUBLISH_ONE),
    _data("PublishToStreamBatch", cost=_PUBLISH_EACH),
    # Pulling moves the consumer's delivery state, but is the read side of the data plane.
    _read("PullMessages", idempotent=False),
    _read("Consume", idempotent=False),
    _data("AckMessage", idempotent=True),
    _data("AckMessages", idempotent=True),
    _data("NakMessage"),
    # -- statistics -------------------------------------------------------------------------------
    _read("GetStatistics"),
    _read("GetStreamStats"),
    # -- Key-Value --------------------------------------------------------------------------------
    _data("KVPut", cost=_KV_WRITE),
    _data("KVCreate", cost=_KV_WRITE),
    _data("KVUpdate"),
    _data("KVDelete", idempotent=True),
    _read("KVGet"),
    _read("KVKeys"),
    _read("KVHistory"),
    _read("KVWatch"),
    _control(
        "KVCreateBucket",
        cost=Cost(
            kind=Kind.KV_BUCKET,
            name=_bucket,
            creates=True,
            max_bytes=_bucket_max_bytes,
            max_bytes_field="max_bytes",
            with_max_bytes=_with_bucket_max_bytes,
        ),
    ),
    _control("KVDeleteBucket", idempotent=True),
    _read("KVListBuckets"),
    _read("KVBucketStatus"),
    # -- objects ----------------------------------------------------------------------------------
    _data("ObjectPut", cost=_OBJECT_WRITE, idempotent=True),
    _data(
        "ObjectPutStream",
        idempotent=True,
        scope=_put_header,
        cost=Cost(kind=Kind.OBJECT_BUCKET, name=_put_stream_bucket, creates=True),
    ),
    _data("ObjectDelete", idempotent=True),
    _read("ObjectGet"),
    _read("ObjectGetStream"),
    _read("ObjectList"),
    # -- health -----------------------------------------------------------------------------------
    _read("HealthCheck", public=True),
)

#: The policy of every RPC, by its gRPC path.
POLICIES: dict[str, Policy] = {SERVICE + row.rpc: row for row in _ROWS}
