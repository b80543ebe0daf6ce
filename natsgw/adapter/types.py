"""Plain values that cross the adapter boundary, so nothing above it needs nats-py's types."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field

from natsgw.errors import GatewayError


@dataclass(frozen=True, slots=True)
class Message:
    """A core NATS message as NATS delivered it (NATS subjects, not the tenant's view)."""

    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    reply: str = ""


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the connected server told us about itself in its INFO."""

    server_id: str
    server_name: str
    version: str
    max_payload: int
    jetstream: bool
    headers: bool


@dataclass(frozen=True, slots=True)
class ConnectionState:
    status: str  # CONNECTED, CONNECTING, RECONNECTING, DRAINING, CLOSED
    connected_url: str
    reconnects: int


@dataclass(frozen=True, slots=True)
class JetStreamAccount:
    streams: int
    consumers: int
    memory: int
    storage: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as the stream stored it (direct get, ordered reader)."""

    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    seq: int = 0
    time: datetime.datetime | None = None
    pending: int = 0  # messages left for an ordered reader when it was delivered


# -- JetStream (natsgw.adapter.jetstream) ---------------------------------------------------------
# NATS names throughout (not the tenant's view); durations in seconds, -1 / 0 as NATS means them.


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    storage: str = "file"  # file | memory
    retention: str = "limits"  # limits | interest | workqueue
    max_msgs: int = -1
    max_bytes: int = -1
    max_age: float = 0.0
    max_msg_size: int = -1
    max_msgs_per_subject: int = -1
    replicas: int = 1
    discard: str = "old"  # old | new
    discard_new_per_subject: bool = False
    duplicate_window: float = 0.0
    # -- per-message TTLs --
    allow_msg_ttl: bool = False
    subject_delete_marker_ttl: float = 0.0  # seconds; 0: no markers


@dataclass(frozen=True, slots=True)
class StreamStateValue:
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    first_ts: datetime.datetime | None
    last_ts: datetime.datetime | None
    num_subjects: int
    consumer_count: int


@dataclass(frozen=True, slots=True)
class StreamDetails:
    spec: StreamSpec
    state: StreamStateValue
    created: datetime.datetime | None


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    name: str = ""
    durable_name: str = ""
    filter_subject: str = ""
    deliver_policy: str = "all"  # all|last|new|by_start_sequence|by_start_time|last_per_subject
    ack_policy: str = "explicit"  # explicit | all | none
    ack_wait: float = 0.0  # 0: NATS default (30 s)
    max_deliver: int = -1
    replay_policy: str = "instant"  # instant | original
    opt_start_seq: int = 0
    opt_start_time: datetime.datetime | None = None
    max_ack_pending: int = 0  # 0: NATS default
    inactive_threshold: float = 0.0
    # -- consumer control --
    filter_subjects: tuple[str, ...] = ()
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    pause_until: datetime.datetime | None = None
    # --- dead letters ---
    backoff: tuple[float, ...] = ()  # redelivery delays (seconds); empty: ack_wait
    #: The tenant's name (not the NATS name) of the dead-letter stream, kept in the consumer's
    #: metadata; natsgw.tenancy maps it relative to the consumer's stream on every copy.
    dead_letter: str = ""


@dataclass(frozen=True, slots=True)
class ConsumerStateValue:
    delivered_stream_seq: int
    delivered_consumer_seq: int
    ack_floor_stream_seq: int
    num_pending: int
    num_redelivered: int
    num_ack_pending: int
    # -- consumer control --
    ack_floor_consumer_seq: int = 0
    num_waiting: int = 0
    paused: bool = False
    pause_remaining: float = 0.0  # seconds
    last_active: datetime.datetime | None = None


@dataclass(frozen=True, slots=True)
class ConsumerDetails:
    stream: str
    name: str
    spec: ConsumerSpec
    state: ConsumerStateValue
    created: datetime.datetime | None


@dataclass(frozen=True, slots=True)
class StreamPubAck:
    stream: str
    sequence: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class JetStreamDelivery:
    """One message a pull consumer delivered; ``reply`` is its ``$JS.ACK`` subject."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    reply: str
    stream: str
    consumer: str
    stream_seq: int
    consumer_seq: int
    num_delivered: int
    num_pending: int
    timestamp: datetime.datetime
    #: Size as NATS counts it against a pull's max_bytes: subject + ack subject + headers + data.
    nats_size: int = 0


# What a pull request's inbox can carry besides a JetStreamDelivery. NATS says these with status
# codes (100/404/408/409/503) and free-text descriptions; the adapter reads them once, so nothing
# above it sees a status number.


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The pull is alive but idle (the request's ``idle_heartbeat``)."""


@dataclass(frozen=True, slots=True)
class NoMessages:
    """A no-wait request found nothing to deliver; the request is over."""


@dataclass(frozen=True, slots=True)
class RequestExpired:
    """The request's ``expires`` passed; it is over (whatever it delivered stays delivered)."""


@dataclass(frozen=True, slots=True)
class BatchCompleted:
    """The request got its whole batch; it is over."""


@dataclass(frozen=True, slots=True)
class TooLarge:
    """The next message does not fit the request's ``max_bytes``; the request is over."""


@dataclass(frozen=True, slots=True)
class LeadershipChange:
    """The consumer moved to another server (leader election, server shutdown): ask again."""

    #: What to tell a caller that got nothing from this request.
    error: GatewayError


@dataclass(frozen=True, slots=True)
class ConsumerDeleted:
    """The consumer was deleted while the request waited."""

    error: GatewayError


@dataclass(frozen=True, slots=True)
class NoResponders:
    """Nothing serves the consumer's pulls: JetStream is not ready yet, or the consumer is gone."""


@dataclass(frozen=True, slots=True)
class PullRefused:
    """NATS refused the request (too many waiting pulls, a bad request, an unknown status)."""

    error: GatewayError


#: Ends the current pull request without anything being wrong.
REQUEST_ENDED = (NoMessages, RequestExpired, BatchCompleted)

PullOutcome = (
    JetStreamDelivery
    | Heartbeat
    | NoMessages
    | RequestExpired
    | BatchCompleted
    | TooLarge
    | LeadershipChange
    | ConsumerDeleted
    | NoResponders
    | PullRefused
)


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """What quotas need of a stream (NATS name)."""

    name: str
    #: The stream's byte limit; 0 or negative means unlimited.
    max_bytes: int
    consumers: int


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One revision of a Key-Value key. ``operation`` is PUT, DEL or PURGE."""

    key: str
    value: bytes
    revision: int
    created: datetime.datetime | None
    operation: str = "PUT"
    #: Why NATS left this marker itself (``Nats-Marker-Reason``: MaxAge, Purge, Remove).
    marker_reason: str = ""


@dataclass(frozen=True, slots=True)
class KVBucket:
    """A Key-Value bucket's configuration and state (NATS bucket name)."""

    name: str
    values: int
    bytes: int
    history: int
    ttl: float  # seconds, 0: forever
    max_bytes: int  # 0: unlimited
    storage: str  # "file" or "memory"
    replicas: int
    created: datetime.datetime | None
    limit_marker_ttl: float = 0.0  # seconds; 0: no markers


@dataclass(frozen=True, slots=True)
class BucketDefaults:
    """How to create a bucket the gateway makes on first use (or on request)."""

    history: int = 1
    ttl: float = 0.0
    max_bytes: int = 0
    storage: str = "file"
    replicas: int = 1
    #: Seconds a marker of a value removed by age lives (0: no markers).
    limit_marker_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """An object's description as its meta record says (no content)."""

    name: str
    size: int
    chunks: int
    digest: str  # "SHA-256=" + base64url, as NATS stores it
    object_id: str  # NATS nuid of this version
    modified: datetime.datetime | None
    metadata: Mapping[str, str] = field(default_factory=dict)
