import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NamespaceScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_USER: _ClassVar[NamespaceScope]
    SCOPE_ORGANIZATION: _ClassVar[NamespaceScope]

class DeliveryPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_ALL: _ClassVar[DeliveryPolicy]
    DELIVERY_LAST: _ClassVar[DeliveryPolicy]
    DELIVERY_NEW: _ClassVar[DeliveryPolicy]
    DELIVERY_BY_START_SEQUENCE: _ClassVar[DeliveryPolicy]
    DELIVERY_BY_START_TIME: _ClassVar[DeliveryPolicy]
    DELIVERY_LAST_PER_SUBJECT: _ClassVar[DeliveryPolicy]

class AckPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_EXPLICIT: _ClassVar[AckPolicy]
    ACK_ALL: _ClassVar[AckPolicy]
    ACK_NONE: _ClassVar[AckPolicy]

class ReplayPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLAY_INSTANT: _ClassVar[ReplayPolicy]
    REPLAY_ORIGINAL: _ClassVar[ReplayPolicy]

class StorageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORAGE_FILE: _ClassVar[StorageType]
    STORAGE_MEMORY: _ClassVar[StorageType]

class KVOperation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_OPERATION_PUT: _ClassVar[KVOperation]
    KV_OPERATION_DELETE: _ClassVar[KVOperation]
    KV_OPERATION_PURGE: _ClassVar[KVOperation]

class BucketStorage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUCKET_STORAGE_DEFAULT: _ClassVar[BucketStorage]
    BUCKET_STORAGE_FILE: _ClassVar[BucketStorage]
    BUCKET_STORAGE_MEMORY: _ClassVar[BucketStorage]

class DiscardPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCARD_OLD: _ClassVar[DiscardPolicy]
    DISCARD_NEW: _ClassVar[DiscardPolicy]

class RetentionPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETENTION_LIMITS: _ClassVar[RetentionPolicy]
    RETENTION_INTEREST: _ClassVar[RetentionPolicy]
    RETENTION_WORK_QUEUE: _ClassVar[RetentionPolicy]

class AckAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_ACTION_ACK: _ClassVar[AckAction]
    ACK_ACTION_NAK: _ClassVar[AckAction]
    ACK_ACTION_IN_PROGRESS: _ClassVar[AckAction]
    ACK_ACTION_TERMINATE: _ClassVar[AckAction]
SCOPE_USER: NamespaceScope
SCOPE_ORGANIZATION: NamespaceScope
DELIVERY_ALL: DeliveryPolicy
DELIVERY_LAST: DeliveryPolicy
DELIVERY_NEW: DeliveryPolicy
DELIVERY_BY_START_SEQUENCE: DeliveryPolicy
DELIVERY_BY_START_TIME: DeliveryPolicy
DELIVERY_LAST_PER_SUBJECT: DeliveryPolicy
ACK_EXPLICIT: AckPolicy
ACK_ALL: AckPolicy
ACK_NONE: AckPolicy
REPLAY_INSTANT: ReplayPolicy
REPLAY_ORIGINAL: ReplayPolicy
STORAGE_FILE: StorageType
STORAGE_MEMORY: StorageType
KV_OPERATION_PUT: KVOperation
KV_OPERATION_DELETE: KVOperation
KV_OPERATION_PURGE: KVOperation
BUCKET_STORAGE_DEFAULT: BucketStorage
BUCKET_STORAGE_FILE: BucketStorage
BUCKET_STORAGE_MEMORY: BucketStorage
DISCARD_OLD: DiscardPolicy
DISCARD_NEW: DiscardPolicy
RETENTION_LIMITS: RetentionPolicy
RETENTION_INTEREST: RetentionPolicy
RETENTION_WORK_QUEUE: RetentionPolicy
ACK_ACTION_ACK: AckAction
ACK_ACTION_NAK: AckAction
ACK_ACTION_IN_PROGRESS: AckAction
ACK_ACTION_TERMINATE: AckAction

class NATSMessage(_message.Message):
    __slots__ = ("subject", "data", "headers", "reply_to", "timestamp")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    reply_to: str
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., reply_to: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("name", "subjects", "storage", "max_msgs", "max_bytes", "max_age", "max_msg_size", "replicas", "discard_new_per_subject", "max_msgs_per_subject", "discard", "duplicate_window", "retention", "allow_msg_ttl", "subject_delete_marker_ttl")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_MSGS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    MAX_MSG_SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DISCARD_NEW_PER_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MAX_MSGS_PER_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DISCARD_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MSG_TTL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DELETE_MARKER_TTL_FIELD_NUMBER: _ClassVar[int]
    name: str
    subjects: _containers.RepeatedScalarFieldContainer[str]
    storage: StorageType
    max_msgs: int
    max_bytes: int
    max_age: _duration_pb2.Duration
    max_msg_size: int
    replicas: int
    discard_new_per_subject: bool
    max_msgs_per_subject: int
    discard: DiscardPolicy
    duplicate_window: _duration_pb2.Duration
    retention: RetentionPolicy
    allow_msg_ttl: bool
    subject_delete_marker_ttl: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., subjects: _Optional[_Iterable[str]] = ..., storage: _Optional[_Union[StorageType, str]] = ..., max_msgs: _Optional[int] = ..., max_bytes: _Optional[int] = ..., max_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_msg_size: _Optional[int] = ..., replicas: _Optional[int] = ..., discard_new_per_subject: _Optional[bool] = ..., max_msgs_per_subject: _Optional[int] = ..., discard: _Optional[_Union[DiscardPolicy, str]] = ..., duplicate_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retention: _Optional[_Union[RetentionPolicy, str]] = ..., allow_msg_ttl: _Optional[bool] = ..., subject_delete_marker_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamInfo(_message.Message):
    __slots__ = ("name", "config", "state", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: StreamConfig
    state: StreamState
    created: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[StreamConfig, _Mapping]] = ..., state: _Optional[_Union[StreamState, _Mapping]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamState(_message.Message):
    __slots__ = ("messages", "bytes", "first_seq", "last_seq", "first_ts", "last_ts", "num_subjects", "consumer_count")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_TS_FIELD_NUMBER: _ClassVar[int]
    LAST_TS_FIELD_NUMBER: _ClassVar[int]
    NUM_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_COUNT_FIELD_NUMBER: _ClassVar[int]
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    first_ts: _timestamp_pb2.Timestamp
    last_ts: _timestamp_pb2.Timestamp
    num_subjects: int
    consumer_count: int
    def __init__(self, messages: _Optional[int] = ..., bytes: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., first_ts: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_ts: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_subjects: _Optional[int] = ..., consumer_count: _Optional[int] = ...) -> None: ...

class ConsumerConfig(_message.Message):
    __slots__ = ("name", "durable_name", "filter_subject", "delivery_policy", "ack_policy", "ack_wait", "max_deliver", "replay_policy", "opt_start_seq", "opt_start_time", "max_ack_pending", "inactive_threshold", "filter_subjects", "description", "metadata", "pause_until", "backoff", "dead_letter_stream")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DURABLE_NAME_FIELD_NUMBER: _ClassVar[int]
    FILTER_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_POLICY_FIELD_NUMBER: _ClassVar[int]
    ACK_POLICY_FIELD_NUMBER: _ClassVar[int]
    ACK_WAIT_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVER_FIELD_NUMBER: _ClassVar[int]
    REPLAY_POLICY_FIELD_NUMBER: _ClassVar[int]
    OPT_START_SEQ_FIELD_NUMBER: _ClassVar[int]
    OPT_START_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_ACK_PENDING_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PAUSE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_STREAM_FIELD_NUMBER: _ClassVar[int]
    name: str
    durable_name: str
    filter_subject: str
    delivery_policy: DeliveryPolicy
    ack_policy: AckPolicy
    ack_wait: _duration_pb2.Duration
    max_deliver: int
    replay_policy: ReplayPolicy
    opt_start_seq: int
    opt_start_time: _timestamp_pb2.Timestamp
    max_ack_pending: int
    inactive_threshold: _duration_pb2.Duration
    filter_subjects: _containers.RepeatedScalarFieldContainer[str]
    description: str
    metadata: _containers.ScalarMap[str, str]
    pause_until: _timestamp_pb2.Timestamp
    backoff: _containers.RepeatedCompositeFieldContainer[_duration_pb2.Duration]
    dead_letter_stream: str
    def __init__(self, name: _Optional[str] = ..., durable_name: _Optional[str] = ..., filter_subject: _Optional[str] = ..., delivery_policy: _Optional[_Union[DeliveryPolicy, str]] = ..., ack_policy: _Optional[_Union[AckPolicy, str]] = ..., ack_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_deliver: _Optional[int] = ..., replay_policy: _Optional[_Union[ReplayPolicy, str]] = ..., opt_start_seq: _Optional[int] = ..., opt_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_ack_pending: _Optional[int] = ..., inactive_threshold: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., filter_subjects: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., pause_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., backoff: _Optional[_Iterable[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]]] = ..., dead_letter_stream: _Optional[str] = ...) -> None: ...

class ConsumerInfo(_message.Message):
    __slots__ = ("stream_name", "name", "config", "state", "created")
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    stream_name: str
    name: str
    config: ConsumerConfig
    state: ConsumerState
    created: _timestamp_pb2.Timestamp
    def __init__(self, stream_name: _Optional[str] = ..., name: _Optional[str] = ..., config: _Optional[_Union[ConsumerConfig, _Mapping]] = ..., state: _Optional[_Union[ConsumerState, _Mapping]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConsumerState(_message.Message):
    __slots__ = ("delivered_seq", "ack_floor_seq", "num_pending", "num_redelivered", "delivered_consumer_seq", "ack_floor_consumer_seq", "num_ack_pending", "num_waiting", "paused", "pause_remaining", "last_active")
    DELIVERED_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACK_FLOOR_SEQ_FIELD_NUMBER: _ClassVar[int]
    NUM_PENDING_FIELD_NUMBER: _ClassVar[int]
    NUM_REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_CONSUMER_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACK_FLOOR_CONSUMER_SEQ_FIELD_NUMBER: _ClassVar[int]
    NUM_ACK_PENDING_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REMAINING_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    delivered_seq: int
    ack_floor_seq: int
    num_pending: int
    num_redelivered: int
    delivered_consumer_seq: int
    ack_floor_consumer_seq: int
    num_ack_pending: int
    num_waiting: int
    paused: bool
    pause_remaining: _duration_pb2.Duration
    last_active: _timestamp_pb2.Timestamp
    def __init__(self, delivered_seq: _Optional[int] = ..., ack_floor_seq: _Optional[int] = ..., num_pending: _Optional[int] = ..., num_redelivered: _Optional[int] = ..., delivered_consumer_seq: _Optional[int] = ..., ack_floor_consumer_seq: _Optional[int] = ..., num_ack_pending: _Optional[int] = ..., num_waiting: _Optional[int] = ..., paused: _Optional[bool] = ..., pause_remaining: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., last_active: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "subject", "data", "headers", "reply_to", "scope")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    reply_to: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., reply_to: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "messages", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    messages: _containers.RepeatedCompositeFieldContainer[NATSMessage]
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[NATSMessage, _Mapping]]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("success", "published_count", "errors")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    published_count: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, success: _Optional[bool] = ..., published_count: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "subject", "queue_group", "scope", "max_batch")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_GROUP_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    subject: str
    queue_group: str
    scope: NamespaceScope
    max_batch: int
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., subject: _Optional[str] = ..., queue_group: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., max_batch: _Optional[int] = ...) -> None: ...

class MessageResponse(_message.Message):
    __slots__ = ("subject", "data", "headers", "reply_to", "timestamp", "sequence", "dropped", "batch")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    reply_to: str
    timestamp: _timestamp_pb2.Timestamp
    sequence: int
    dropped: int
    batch: _containers.RepeatedCompositeFieldContainer[MessageResponse]
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., reply_to: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., dropped: _Optional[int] = ..., batch: _Optional[_Iterable[_Union[MessageResponse, _Mapping]]] = ...) -> None: ...

class UnsubscribeRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "subject", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    subject: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., subject: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class UnsubscribeResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class RequestRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "subject", "data", "timeout", "headers", "scope")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    subject: str
    data: bytes
    timeout: _duration_pb2.Duration
    headers: _containers.ScalarMap[str, str]
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., subject: _Optional[str] = ..., data: _Optional[bytes] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., headers: _Optional[_Mapping[str, str]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class RequestResponse(_message.Message):
    __slots__ = ("success", "data", "error_message", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: bytes
    error_message: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[bytes] = ..., error_message: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class QueueSubscribeRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "subject", "queue_group", "scope", "max_batch")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_GROUP_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    subject: str
    queue_group: str
    scope: NamespaceScope
    max_batch: int
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., subject: _Optional[str] = ..., queue_group: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., max_batch: _Optional[int] = ...) -> None: ...

class CreateStreamRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "config", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    config: StreamConfig
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., config: _Optional[_Union[StreamConfig, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class CreateStreamResponse(_message.Message):
    __slots__ = ("success", "stream", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    stream: StreamInfo
    message: str
    def __init__(self, success: _Optional[bool] = ..., stream: _Optional[_Union[StreamInfo, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class DeleteStreamRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class DeleteStreamResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class GetStreamInfoRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class GetStreamInfoResponse(_message.Message):
    __slots__ = ("stream",)
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream: StreamInfo
    def __init__(self, stream: _Optional[_Union[StreamInfo, _Mapping]] = ...) -> None: ...

class ListStreamsRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class ListStreamsResponse(_message.Message):
    __slots__ = ("streams",)
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamInfo]
    def __init__(self, streams: _Optional[_Iterable[_Union[StreamInfo, _Mapping]]] = ...) -> None: ...

class UpdateStreamRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "config", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    config: StreamConfig
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., config: _Optional[_Union[StreamConfig, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class UpdateStreamResponse(_message.Message):
    __slots__ = ("success", "stream")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    success: bool
    stream: StreamInfo
    def __init__(self, success: _Optional[bool] = ..., stream: _Optional[_Union[StreamInfo, _Mapping]] = ...) -> None: ...

class PurgeStreamRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "subject", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    subject: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., subject: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class PurgeStreamResponse(_message.Message):
    __slots__ = ("success", "purged_count")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    PURGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    success: bool
    purged_count: int
    def __init__(self, success: _Optional[bool] = ..., purged_count: _Optional[int] = ...) -> None: ...

class CreateConsumerRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "config", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    config: ConsumerConfig
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., config: _Optional[_Union[ConsumerConfig, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class CreateConsumerResponse(_message.Message):
    __slots__ = ("success", "consumer", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    consumer: ConsumerInfo
    message: str
    def __init__(self, success: _Optional[bool] = ..., consumer: _Optional[_Union[ConsumerInfo, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class DeleteConsumerRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class DeleteConsumerResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class GetConsumerInfoRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class GetConsumerInfoResponse(_message.Message):
    __slots__ = ("consumer",)
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    consumer: ConsumerInfo
    def __init__(self, consumer: _Optional[_Union[ConsumerInfo, _Mapping]] = ...) -> None: ...

class ListConsumersRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class ListConsumersResponse(_message.Message):
    __slots__ = ("consumers",)
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerInfo]
    def __init__(self, consumers: _Optional[_Iterable[_Union[ConsumerInfo, _Mapping]]] = ...) -> None: ...

class PublishToStreamRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "subject", "data", "headers", "scope", "ttl", "ttl_never")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    TTL_NEVER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    scope: NamespaceScope
    ttl: _duration_pb2.Duration
    ttl_never: bool
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., ttl_never: _Optional[bool] = ...) -> None: ...

class PublishToStreamResponse(_message.Message):
    __slots__ = ("success", "sequence", "timestamp", "message", "duplicate")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    sequence: int
    timestamp: _timestamp_pb2.Timestamp
    message: str
    duplicate: bool
    def __init__(self, success: _Optional[bool] = ..., sequence: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class PullMessagesRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "batch_size", "max_wait", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    batch_size: int
    max_wait: _duration_pb2.Duration
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., batch_size: _Optional[int] = ..., max_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class PullMessagesResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[JetStreamMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[JetStreamMessage, _Mapping]]] = ...) -> None: ...

class JetStreamMessage(_message.Message):
    __slots__ = ("subject", "data", "headers", "sequence", "timestamp", "num_delivered", "ack_token", "consumer_sequence", "num_pending")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    NUM_DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ACK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NUM_PENDING_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    sequence: int
    timestamp: _timestamp_pb2.Timestamp
    num_delivered: int
    ack_token: str
    consumer_sequence: int
    num_pending: int
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., sequence: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_delivered: _Optional[int] = ..., ack_token: _Optional[str] = ..., consumer_sequence: _Optional[int] = ..., num_pending: _Optional[int] = ...) -> None: ...

class AckMessageRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "sequence", "scope", "ack_token", "action", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ACK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    sequence: int
    scope: NamespaceScope
    ack_token: str
    action: AckAction
    reason: str
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., sequence: _Optional[int] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., ack_token: _Optional[str] = ..., action: _Optional[_Union[AckAction, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class AckMessageResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class NakMessageRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "sequence", "delay", "scope", "ack_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ACK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    sequence: int
    delay: _duration_pb2.Duration
    scope: NamespaceScope
    ack_token: str
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., sequence: _Optional[int] = ..., delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., ack_token: _Optional[str] = ...) -> None: ...

class NakMessageResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class KVPutRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "key", "value", "scope", "ttl")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    key: str
    value: bytes
    scope: NamespaceScope
    ttl: _duration_pb2.Duration
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class KVPutResponse(_message.Message):
    __slots__ = ("success", "revision")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    success: bool
    revision: int
    def __init__(self, success: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class KVGetRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "key", "scope", "revision")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    key: str
    scope: NamespaceScope
    revision: int
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., revision: _Optional[int] = ...) -> None: ...

class KVGetResponse(_message.Message):
    __slots__ = ("found", "value", "revision", "created")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    revision: int
    created: _timestamp_pb2.Timestamp
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., revision: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class KVDeleteRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "key", "scope", "expected_revision", "purge", "ttl")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    key: str
    scope: NamespaceScope
    expected_revision: int
    purge: bool
    ttl: _duration_pb2.Duration
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., expected_revision: _Optional[int] = ..., purge: _Optional[bool] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class KVDeleteResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class KVKeysRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class KVKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ObjectPutRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "object_name", "data", "metadata", "scope")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    object_name: str
    data: bytes
    metadata: _containers.ScalarMap[str, str]
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., object_name: _Optional[str] = ..., data: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class ObjectPutResponse(_message.Message):
    __slots__ = ("success", "object_id", "info")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    success: bool
    object_id: str
    info: ObjectInfo
    def __init__(self, success: _Optional[bool] = ..., object_id: _Optional[str] = ..., info: _Optional[_Union[ObjectInfo, _Mapping]] = ...) -> None: ...

class ObjectGetRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "object_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    object_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., object_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class ObjectGetResponse(_message.Message):
    __slots__ = ("found", "data", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    found: bool
    data: bytes
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, found: _Optional[bool] = ..., data: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ObjectDeleteRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "object_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    object_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., object_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class ObjectDeleteResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class ObjectListRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class ObjectListResponse(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("name", "size", "modified", "metadata", "digest", "object_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    modified: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    digest: str
    object_id: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., modified: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., digest: _Optional[str] = ..., object_id: _Optional[str] = ...) -> None: ...

class GetStatisticsRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class GetStatisticsResponse(_message.Message):
    __slots__ = ("total_streams", "total_consumers", "total_messages", "total_bytes", "connections", "in_msgs", "out_msgs", "in_bytes", "out_bytes")
    TOTAL_STREAMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    IN_MSGS_FIELD_NUMBER: _ClassVar[int]
    OUT_MSGS_FIELD_NUMBER: _ClassVar[int]
    IN_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    total_streams: int
    total_consumers: int
    total_messages: int
    total_bytes: int
    connections: int
    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    def __init__(self, total_streams: _Optional[int] = ..., total_consumers: _Optional[int] = ..., total_messages: _Optional[int] = ..., total_bytes: _Optional[int] = ..., connections: _Optional[int] = ..., in_msgs: _Optional[int] = ..., out_msgs: _Optional[int] = ..., in_bytes: _Optional[int] = ..., out_bytes: _Optional[int] = ...) -> None: ...

class GetStreamStatsRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class GetStreamStatsResponse(_message.Message):
    __slots__ = ("stream_name", "messages", "bytes", "consumer_count", "message_rate", "byte_rate")
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_RATE_FIELD_NUMBER: _ClassVar[int]
    BYTE_RATE_FIELD_NUMBER: _ClassVar[int]
    stream_name: str
    messages: int
    bytes: int
    consumer_count: int
    message_rate: float
    byte_rate: float
    def __init__(self, stream_name: _Optional[str] = ..., messages: _Optional[int] = ..., bytes: _Optional[int] = ..., consumer_count: _Optional[int] = ..., message_rate: _Optional[float] = ..., byte_rate: _Optional[float] = ...) -> None: ...

class NATSHealthCheckRequest(_message.Message):
    __slots__ = ("deep_check",)
    DEEP_CHECK_FIELD_NUMBER: _ClassVar[int]
    deep_check: bool
    def __init__(self, deep_check: _Optional[bool] = ...) -> None: ...

class NATSHealthCheckResponse(_message.Message):
    __slots__ = ("healthy", "nats_status", "jetstream_enabled", "connections", "checked_at", "message")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    NATS_STATUS_FIELD_NUMBER: _ClassVar[int]
    JETSTREAM_ENABLED_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    nats_status: str
    jetstream_enabled: bool
    connections: int
    checked_at: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, healthy: _Optional[bool] = ..., nats_status: _Optional[str] = ..., jetstream_enabled: _Optional[bool] = ..., connections: _Optional[int] = ..., checked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class KVEntry(_message.Message):
    __slots__ = ("key", "value", "revision", "created", "operation", "marker_reason")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    MARKER_REASON_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    revision: int
    created: _timestamp_pb2.Timestamp
    operation: KVOperation
    marker_reason: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., revision: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., operation: _Optional[_Union[KVOperation, str]] = ..., marker_reason: _Optional[str] = ...) -> None: ...

class KVCreateRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "key", "value", "scope", "ttl")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    key: str
    value: bytes
    scope: NamespaceScope
    ttl: _duration_pb2.Duration
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class KVCreateResponse(_message.Message):
    __slots__ = ("success", "revision")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    success: bool
    revision: int
    def __init__(self, success: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class KVUpdateRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "key", "value", "expected_revision", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    key: str
    value: bytes
    expected_revision: int
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., expected_revision: _Optional[int] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class KVUpdateResponse(_message.Message):
    __slots__ = ("success", "revision")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    success: bool
    revision: int
    def __init__(self, success: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class KVHistoryRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "key", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    key: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class KVHistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[KVEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[KVEntry, _Mapping]]] = ...) -> None: ...

class KVWatchRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "key", "from_revision", "updates_only", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_ONLY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    key: str
    from_revision: int
    updates_only: bool
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., from_revision: _Optional[int] = ..., updates_only: _Optional[bool] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class KVBucketInfo(_message.Message):
    __slots__ = ("bucket", "values", "bytes", "history", "ttl", "max_bytes", "storage", "replicas", "created", "limit_marker_ttl")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MARKER_TTL_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    values: int
    bytes: int
    history: int
    ttl: _duration_pb2.Duration
    max_bytes: int
    storage: BucketStorage
    replicas: int
    created: _timestamp_pb2.Timestamp
    limit_marker_ttl: _duration_pb2.Duration
    def __init__(self, bucket: _Optional[str] = ..., values: _Optional[int] = ..., bytes: _Optional[int] = ..., history: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_bytes: _Optional[int] = ..., storage: _Optional[_Union[BucketStorage, str]] = ..., replicas: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit_marker_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class KVCreateBucketRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "history", "ttl", "max_bytes", "storage", "replicas", "scope", "limit_marker_ttl")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MARKER_TTL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    history: int
    ttl: _duration_pb2.Duration
    max_bytes: int
    storage: BucketStorage
    replicas: int
    scope: NamespaceScope
    limit_marker_ttl: _duration_pb2.Duration
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., history: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_bytes: _Optional[int] = ..., storage: _Optional[_Union[BucketStorage, str]] = ..., replicas: _Optional[int] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., limit_marker_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class KVCreateBucketResponse(_message.Message):
    __slots__ = ("success", "bucket")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    success: bool
    bucket: KVBucketInfo
    def __init__(self, success: _Optional[bool] = ..., bucket: _Optional[_Union[KVBucketInfo, _Mapping]] = ...) -> None: ...

class KVDeleteBucketRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class KVDeleteBucketResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class KVListBucketsRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class KVListBucketsResponse(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[KVBucketInfo]
    def __init__(self, buckets: _Optional[_Iterable[_Union[KVBucketInfo, _Mapping]]] = ...) -> None: ...

class KVBucketStatusRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class KVBucketStatusResponse(_message.Message):
    __slots__ = ("bucket",)
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    bucket: KVBucketInfo
    def __init__(self, bucket: _Optional[_Union[KVBucketInfo, _Mapping]] = ...) -> None: ...

class ObjectPutHeader(_message.Message):
    __slots__ = ("user_id", "organization_id", "bucket", "object_name", "metadata", "scope", "sha256")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    bucket: str
    object_name: str
    metadata: _containers.ScalarMap[str, str]
    scope: NamespaceScope
    sha256: str
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., bucket: _Optional[str] = ..., object_name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class ObjectPutStreamRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ObjectPutHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ObjectPutHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ObjectGetStreamResponse(_message.Message):
    __slots__ = ("found", "info", "chunk")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    found: bool
    info: ObjectInfo
    chunk: bytes
    def __init__(self, found: _Optional[bool] = ..., info: _Optional[_Union[ObjectInfo, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class StreamMessage(_message.Message):
    __slots__ = ("subject", "data", "headers", "msg_id")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    MSG_ID_FIELD_NUMBER: _ClassVar[int]
    subject: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    msg_id: str
    def __init__(self, subject: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., msg_id: _Optional[str] = ...) -> None: ...

class PublishToStreamBatchRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "messages", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    messages: _containers.RepeatedCompositeFieldContainer[StreamMessage]
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[StreamMessage, _Mapping]]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class StreamPublishResult(_message.Message):
    __slots__ = ("success", "sequence", "duplicate", "error", "status_code")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    sequence: int
    duplicate: bool
    error: str
    status_code: int
    def __init__(self, success: _Optional[bool] = ..., sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ..., error: _Optional[str] = ..., status_code: _Optional[int] = ...) -> None: ...

class PublishToStreamBatchResponse(_message.Message):
    __slots__ = ("published_count", "results")
    PUBLISHED_COUNT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    published_count: int
    results: _containers.RepeatedCompositeFieldContainer[StreamPublishResult]
    def __init__(self, published_count: _Optional[int] = ..., results: _Optional[_Iterable[_Union[StreamPublishResult, _Mapping]]] = ...) -> None: ...

class AckMessagesRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "ack_tokens", "action", "nak_delay", "scope", "term_reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NAK_DELAY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TERM_REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    ack_tokens: _containers.RepeatedScalarFieldContainer[str]
    action: AckAction
    nak_delay: _duration_pb2.Duration
    scope: NamespaceScope
    term_reason: str
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., ack_tokens: _Optional[_Iterable[str]] = ..., action: _Optional[_Union[AckAction, str]] = ..., nak_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., term_reason: _Optional[str] = ...) -> None: ...

class AckResult(_message.Message):
    __slots__ = ("success", "error", "status_code")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error: str
    status_code: int
    def __init__(self, success: _Optional[bool] = ..., error: _Optional[str] = ..., status_code: _Optional[int] = ...) -> None: ...

class AckMessagesResponse(_message.Message):
    __slots__ = ("succeeded", "results")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    succeeded: int
    results: _containers.RepeatedCompositeFieldContainer[AckResult]
    def __init__(self, succeeded: _Optional[int] = ..., results: _Optional[_Iterable[_Union[AckResult, _Mapping]]] = ...) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "max_messages", "max_bytes", "heartbeat", "scope", "max_batch")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    max_messages: int
    max_bytes: int
    heartbeat: _duration_pb2.Duration
    scope: NamespaceScope
    max_batch: int
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., max_messages: _Optional[int] = ..., max_bytes: _Optional[int] = ..., heartbeat: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ..., max_batch: _Optional[int] = ...) -> None: ...

class ConsumeResponse(_message.Message):
    __slots__ = ("message", "heartbeat", "outstanding_messages", "outstanding_bytes", "batch")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    message: JetStreamMessage
    heartbeat: bool
    outstanding_messages: int
    outstanding_bytes: int
    batch: _containers.RepeatedCompositeFieldContainer[JetStreamMessage]
    def __init__(self, message: _Optional[_Union[JetStreamMessage, _Mapping]] = ..., heartbeat: _Optional[bool] = ..., outstanding_messages: _Optional[int] = ..., outstanding_bytes: _Optional[int] = ..., batch: _Optional[_Iterable[_Union[JetStreamMessage, _Mapping]]] = ...) -> None: ...

class UpdateConsumerRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "config", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    config: ConsumerConfig
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., config: _Optional[_Union[ConsumerConfig, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class UpdateConsumerResponse(_message.Message):
    __slots__ = ("success", "consumer")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    success: bool
    consumer: ConsumerInfo
    def __init__(self, success: _Optional[bool] = ..., consumer: _Optional[_Union[ConsumerInfo, _Mapping]] = ...) -> None: ...

class PauseConsumerRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "pause_until", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    pause_until: _timestamp_pb2.Timestamp
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., pause_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class ResumeConsumerRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class PauseConsumerResponse(_message.Message):
    __slots__ = ("paused", "pause_until", "pause_remaining")
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REMAINING_FIELD_NUMBER: _ClassVar[int]
    paused: bool
    pause_until: _timestamp_pb2.Timestamp
    pause_remaining: _duration_pb2.Duration
    def __init__(self, paused: _Optional[bool] = ..., pause_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pause_remaining: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ResetConsumerRequest(_message.Message):
    __slots__ = ("user_id", "organization_id", "stream_name", "consumer_name", "sequence", "time", "scope")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    organization_id: str
    stream_name: str
    consumer_name: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    scope: NamespaceScope
    def __init__(self, user_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., stream_name: _Optional[str] = ..., consumer_name: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope: _Optional[_Union[NamespaceScope, str]] = ...) -> None: ...

class ResetConsumerResponse(_message.Message):
    __slots__ = ("consumer", "reset_sequence")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    RESET_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    consumer: ConsumerInfo
    reset_sequence: int
    def __init__(self, consumer: _Optional[_Union[ConsumerInfo, _Mapping]] = ..., reset_sequence: _Optional[int] = ...) -> None: ...
