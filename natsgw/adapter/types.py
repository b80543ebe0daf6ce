"""Plain values that cross the adapter boundary, so nothing above it needs nats-py's types."""

from __future__ import annotations

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
