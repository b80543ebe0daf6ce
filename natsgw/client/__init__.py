"""natsgw's Python client: typed, async, on grpclib and the gateway's generated messages.

.. code-block:: python

    from natsgw.client import connect

    async with await connect("127.0.0.1:50056", user_id="alice") as client:
        async with client.subscribe("greetings.*") as sub:
            await client.publish("greetings.hello", b"hi")
            async for msg in sub:
                print(msg.subject, msg.data)
                break

Installs with ``pip install 'natsgw[client]'`` (grpclib, betterproto2, protobuf); it imports
neither nats-py nor the gateway.
"""

from natsgw.client.client import Client, connect, parse_target, tls_context
from natsgw.client.consumer import Consumer
from natsgw.client.errors import (
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NatsgwError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from natsgw.client.objects import ObjectDownload
from natsgw.client.types import (
    AckAction,
    AckPolicy,
    BatchResult,
    ConsumerConfig,
    ConsumerInfo,
    DeliveryPolicy,
    JsMsg,
    KvBucketInfo,
    KvEntry,
    KvOperation,
    Msg,
    ObjectInfo,
    PubAck,
    Reply,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

__all__ = [
    "AckAction",
    "AckPolicy",
    "AlreadyExists",
    "BatchResult",
    "Cancelled",
    "Client",
    "Consumer",
    "ConsumerConfig",
    "ConsumerInfo",
    "DataLoss",
    "DeadlineExceeded",
    "DeliveryPolicy",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "JsMsg",
    "KvBucketInfo",
    "KvEntry",
    "KvOperation",
    "Msg",
    "NatsgwError",
    "NotFound",
    "ObjectDownload",
    "ObjectInfo",
    "PermissionDenied",
    "PubAck",
    "Reply",
    "ResourceExhausted",
    "RetentionPolicy",
    "StorageType",
    "StreamConfig",
    "StreamInfo",
    "Unauthenticated",
    "Unavailable",
    "connect",
    "parse_target",
    "tls_context",
]
