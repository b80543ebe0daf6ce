"""Plain values that cross the adapter boundary, so nothing above it needs nats-py's types."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field


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
class KVEntry:
    """One revision of a Key-Value key. ``operation`` is PUT, DEL or PURGE."""

    key: str
    value: bytes
    revision: int
    created: datetime.datetime | None
    operation: str = "PUT"


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


@dataclass(frozen=True, slots=True)
class BucketDefaults:
    """How to create a bucket the gateway makes on first use (or on request)."""

    history: int = 1
    ttl: float = 0.0
    max_bytes: int = 0
    storage: str = "file"
    replicas: int = 1


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
