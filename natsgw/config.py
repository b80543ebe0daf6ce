"""Settings: one typed, immutable object built from the environment once, at start-up.

The seed's variable names (``NATS_URLS``, ``GRPC_PORT``, ``CONSUL_*``, ``LOKI_URL`` ...) are the
public interface; everything new is prefixed ``NATSGW_``. A malformed value raises
:class:`ConfigError` naming the variable, so a bad deployment fails loudly instead of half-working.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from natsgw.ops.secrets import MASK, is_secret_name, mask_text, shown_setting

T = TypeVar("T")

MIB = 1024 * 1024


class ConfigError(ValueError):
    """A setting is malformed; the message names the environment variable."""


class BucketStorageKind(StrEnum):
    FILE = "file"
    MEMORY = "memory"


class AuthMode(StrEnum):
    #: Identity from the request's user_id (the original service's behaviour); loopback only
    #: unless NATSGW_TRUSTED_ALLOW_REMOTE=true.
    TRUSTED = "trusted"
    #: Static API tokens from NATSGW_AUTH_TOKENS_FILE, sent as ``authorization: Bearer ...``.
    TOKEN = "token"
    #: Bearer JWTs verified against a key file or a JWKS URL.
    JWT = "jwt"


class SlowConsumerPolicy(StrEnum):
    #: End the subscription stream with RESOURCE_EXHAUSTED: the client learns it fell behind.
    CLOSE = "close"
    #: NATS's own convention (the default): drop new messages while the buffer is full; gaps
    #: show in ``MessageResponse.sequence`` and the count in ``MessageResponse.dropped``.
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Settings:
    # NATS connection (seed names)
    nats_urls: tuple[str, ...] = ()
    nats_username: str = ""
    nats_password: str = ""
    nats_token: str = ""
    nats_cluster_id: str = ""
    jetstream_enabled: bool = True
    jetstream_domain: str = ""
    # gRPC listener (seed names, plus GRPC_HOST)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50056
    service_name: str = "nats-grpc-service"
    service_hostname: str = ""
    # Integrations (seed names)
    loki_url: str = ""
    consul_enabled: bool = False
    consul_host: str = "localhost"
    consul_port: int = 8500
    # natsgw's own
    # Same default as from_env (XDG data dir), resolved when Settings() is built.
    data_dir: Path = field(default_factory=lambda: _default_data_dir())
    embedded_nats_port: int = 0
    nats_monitor_url: str = ""
    namespace_root: str = "natsgw"
    max_message_size: int = 10 * MIB
    request_timeout: float = 5.0
    publish_confirm_timeout: float = 5.0
    # Server streams: buffers, slow consumers (natsgw.service.subscriptions, .fanout)
    #: A burst of a few full PublishBatch calls (1000 each) fits; bytes bound the memory.
    subscription_buffer_msgs: int = 4096
    #: 0: twice max_message_size. Never below max_message_size (checked in validated()).
    subscription_buffer_bytes: int = 0
    slow_consumer_policy: SlowConsumerPolicy = SlowConsumerPolicy.DROP
    #: Open Subscribe/QueueSubscribe/Consume/KVWatch/ObjectGetStream calls per tenant (0: no limit).
    quota_streaming_calls: int = 256
    shutdown_grace: float = 10.0
    #: Serving processes on the one gRPC port (SO_REUSEPORT); 1: this process serves itself.
    workers: int = 1
    log_level: str = "info"
    log_format: str = "auto"
    # JetStream (natsgw.service.jetstream, natsgw.tenancy.acks)
    #: HMAC key of ack tokens; empty: a random key per process (with NATSGW_WORKERS, one drawn by
    #: the supervisor and shared by its workers), so only this replica can use them.
    ack_token_secret: str = ""
    #: Deliveries remembered for ack/nak by (stream, consumer, sequence), and for how long.
    delivery_memory_size: int = 100_000
    delivery_memory_ttl: float = 3600.0
    #: GetStreamStats rates are messages stored per second over this many seconds.
    stream_stats_window: float = 60.0
    #: JetStream publishes one PublishToStreamBatch call keeps in flight at once.
    stream_publish_inflight: int = 256
    # Key-Value buckets made on first put (and the zero values of KVCreateBucket)
    kv_history: int = 5
    kv_ttl: float = 0.0  # seconds; 0 keeps values forever
    kv_max_bytes: int = 0  # 0: unlimited
    kv_storage: BucketStorageKind = BucketStorageKind.FILE
    kv_replicas: int = 1
    # Object buckets made on first put
    object_ttl: float = 0.0
    object_max_bytes: int = 0
    object_storage: BucketStorageKind = BucketStorageKind.FILE
    object_replicas: int = 1
    # Four times nats-py's 128 KiB: a fourth of the publishes and acks per object (unary 8 MiB
    # puts ~0.7x -> ~0.87x nats-py's own put); any client reads any chunk size.
    object_chunk_size: int = 512 * 1024

    # Authentication (natsgw.auth.identity, natsgw.auth)
    auth_mode: AuthMode = AuthMode.TRUSTED
    trusted_allow_remote: bool = False
    auth_tokens_file: Path | None = None
    auth_act_as_role: str = "natsgw:act-as"
    jwt_key_file: Path | None = None
    jwt_jwks_url: str = ""
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway: float = 30.0
    jwt_jwks_refresh: float = 300.0
    jwt_user_claim: str = "sub"
    jwt_organizations_claim: str = "org_ids"
    jwt_roles_claim: str = "roles"
    # TLS for the gRPC port (natsgw.ops.tls)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # HTTP side port: /metrics, /healthz, /readyz (natsgw.ops.http); None = off, 0 = any free port
    http_host: str = ""
    http_port: int | None = None
    # Audit to Loki (natsgw.ops.audit)
    audit_queue_size: int = 10000
    #: Also audit successful data-plane writes (publishes, acks, KV/object writes): one event per
    #: call. Off by default: control-plane changes, refusals and failures are always audited.
    audit_data_plane: bool = False
    loki_batch_size: int = 500
    loki_flush_interval: float = 1.0
    loki_tenant: str = ""
    # Consul (natsgw.ops.consul)
    consul_service_address: str = ""
    consul_token: str = ""
    consul_check_interval: float = 10.0
    consul_deregister_after: float = 60.0
    consul_sync_interval: float = 30.0
    # Per-tenant quotas (natsgw.pipeline.quotas); 0 = unlimited
    quota_streams: int = 0
    quota_consumers: int = 0
    quota_kv_buckets: int = 0
    quota_object_buckets: int = 0
    quota_max_bytes: int = 0
    quota_publish_rate: float = 0.0
    quota_publish_burst: int = 0
    quotas_file: Path | None = None
    # Request bounds (natsgw.wire.codec): most items a repeated field of one request may carry,
    # checked before the request is expanded; more is INVALID_ARGUMENT naming the variable.
    max_batch_messages: int = 1000
    max_ack_tokens: int = 1000
    max_headers: int = 256
    max_list_items: int = 1024
    #: Streams opened with a token or JWT re-verify it this often (and at a JWT's expiry);
    #: the tokens file is re-read on the same rhythm (natsgw.auth.expiry).
    auth_recheck_interval: float = 5.0
    # Per-tenant metrics and the /status page (natsgw.ops.metrics, natsgw.ops.status)
    #: Tenants always shown by name in natsgw_tenant_* metrics and on /status (``user:ID``,
    #: ``organization:ID``, as in the quotas file).
    metrics_tenants: tuple[str, ...] = ()
    #: How many of the busiest other tenants are shown; the rest are summed as ``other``.
    metrics_tenants_top: int = 10
    #: Show tenant names on the side port (it has no authentication); otherwise pseudonyms.
    status_tenant_names: bool = False
    #: Tenants whose counters are kept; beyond it the least recently active are folded into
    #: ``other`` (their GetStatistics traffic figures start again from zero).
    tenant_stats_max: int = 10_000
    # The embedded nats-server (natsgw.ops.embedded)
    #: Open the embedded nats-server's HTTP monitoring port (loopback, a free port, no
    #: authentication: it shows every tenant's subjects). Off: what natsgw reads from /varz
    #: (server-wide counters, e.g. NatsHealthCheck's connections) reads 0 unless
    #: NATSGW_NATS_MONITOR_URL is set.
    embedded_monitor: bool = False
    # What a caller may make the gateway hold before it is known (natsgw.pipeline.chain)
    #: A request message must have fully arrived this many seconds after the gateway started
    #: waiting for it (each message of a client stream on its own), else DEADLINE_EXCEEDED.
    request_read_timeout: float = 10.0
    #: Trusted mode: bytes of a request read before its user_id is known (it must lie within
    #: them); also the largest request a public RPC (HealthCheck) takes, in every mode.
    trusted_preauth_bytes: int = 64 * 1024
    #: Longest user_id / organization_id (UTF-8 bytes), checked before audit, logging or naming.
    max_id_length: int = 256
    # The shared NATS connections: read windows, outage health (natsgw.adapter.flow)
    #: Reply bytes one NATS connection may have asked for and not yet received (direct gets,
    #: object chunks); keeps nats-server's queue towards the gateway below its max_pending, so
    #: one tenant's large reads never get the connection cut as a slow consumer.
    nats_read_window_bytes: int = 32 * MIB
    #: /healthz answers 503 once a NATS connection has been down (and could not be brought back)
    #: this long, so a liveness probe restarts the process; /readyz is 503 at once.
    nats_down_unhealthy_after: float = 45.0
    #: Largest Consume ``max_bytes`` (bytes a stream may have delivered and not yet acked):
    #: beyond it INVALID_ARGUMENT naming the field.
    consume_max_bytes: int = 16 * MIB
    #: Bytes one object read (ObjectGet, ObjectGetStream) may have in transit from NATS.
    object_read_window_bytes: int = 4 * MIB
    # The dead-letter relay (natsgw.service.dead_letters)
    #: Run this replica's share of the dead-letter relay (every replica may; each advisory is
    #: handled by one of them). Off: consumers' dead_letter_stream copies wait for a replica
    #: that has it on.
    dead_letter_relay: bool = True
    #: Attempts to store one dead-letter copy (its stream deleted, NATS down) before it is
    #: given up (logged and counted).
    dead_letter_attempts: int = 20
    #: Longest wait between two attempts (they start at 1 s and double).
    dead_letter_retry_max: float = 60.0
    # The HTTP/2 edge (natsgw.edge); 0 turns a limit off.
    #: Open gRPC connections in total (also kept below the fd limit) and from one peer address.
    edge_max_connections: int = 4096
    edge_max_connections_per_peer: int = 256
    #: A new connection must send its first request within this many seconds.
    edge_handshake_timeout: float = 10.0
    #: A connection without a call in progress this long is closed with GOAWAY NO_ERROR.
    edge_idle_timeout: float = 300.0
    #: Per connection and second: stream resets, PINGs and SETTINGS frames a client may send;
    #: one more and the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed.
    edge_resets_per_second: int = 200
    edge_pings_per_second: int = 100
    edge_settings_per_second: int = 20
    #: Answer bytes buffered for a connection whose peer does not read; beyond: it is closed.
    edge_outbound_buffer_bytes: int = 16 * MIB
    #: A connection whose answers cannot be written for this long (peer not reading) is closed.
    edge_write_stall_timeout: float = 30.0
    # Large request bodies being assembled (natsgw.wire.budget)
    #: Bytes of large (> 64 KiB), unfinished request messages read at once, in total; a message
    #: that gets no room within a second is answered RESOURCE_EXHAUSTED (natsgw.wire.budget).
    request_buffer_bytes: int = 256 * MIB
    #: The same for one connection; 0: 4 x the largest request message (NATSGW_MAX_MESSAGE_SIZE
    #: plus 64 KiB), at most request_buffer_bytes.
    request_buffer_bytes_per_connection: int = 0

    def __repr__(self) -> str:
        """Masked like ``check-config``: a Settings printed by accident shows no secret."""
        shown = (f"{n}={shown_setting(n, getattr(self, n))!r}" for n in self.__slots__)
        return f"Settings({', '.join(shown)})"

    @property
    def stream_buffer_bytes(self) -> int:
        """Bytes one stream may buffer: always room for the largest message the gateway takes."""
        return self.subscription_buffer_bytes or 2 * self.max_message_size

    @property
    def embedded(self) -> bool:
        """No NATS_URLS: natsgw runs its own nats-server."""
        return not self.nats_urls

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = _Env(os.environ if env is None else env)
        return cls(
            nats_urls=e.get("NATS_URLS", _urls, ()),
            nats_username=e.get("NATS_USERNAME", str, ""),
            nats_password=e.get("NATS_PASSWORD", str, ""),
            nats_token=e.get("NATS_TOKEN", str, ""),
            nats_cluster_id=e.get("NATS_CLUSTER_ID", str, ""),
            jetstream_enabled=e.get("NATS_JETSTREAM_ENABLED", _bool, True),
            jetstream_domain=e.get("NATS_JETSTREAM_DOMAIN", str, ""),
            grpc_host=e.get("GRPC_HOST", _text, "127.0.0.1"),
            grpc_port=e.get("GRPC_PORT", _port, 50056),
            service_name=e.get("SERVICE_NAME", _text, "nats-grpc-service"),
            service_hostname=e.get("SERVICE_HOSTNAME", str, ""),
            loki_url=e.get("LOKI_URL", _http_url, ""),
            consul_enabled=e.get("CONSUL_ENABLED", _bool, False),
            consul_host=e.get("CONSUL_HOST", _text, "localhost"),
            consul_port=e.get("CONSUL_PORT", _port, 8500),
            data_dir=e.get("NATSGW_DATA_DIR", Path, _default_data_dir()),
            embedded_nats_port=e.get("NATSGW_EMBEDDED_NATS_PORT", _port_or_zero, 0),
            nats_monitor_url=e.get("NATSGW_NATS_MONITOR_URL", _http_url, ""),
            namespace_root=e.get("NATSGW_NAMESPACE_ROOT", _root, "natsgw"),
            max_message_size=e.get("NATSGW_MAX_MESSAGE_SIZE", _size, 10 * MIB),
            request_timeout=e.get("NATSGW_REQUEST_TIMEOUT", _seconds, 5.0),
            publish_confirm_timeout=e.get("NATSGW_PUBLISH_CONFIRM_TIMEOUT", _seconds, 5.0),
            subscription_buffer_msgs=e.get("NATSGW_SUBSCRIPTION_BUFFER_MSGS", _positive, 4096),
            subscription_buffer_bytes=e.get("NATSGW_SUBSCRIPTION_BUFFER_BYTES", _size, 0),
            slow_consumer_policy=e.get(
                "NATSGW_SLOW_CONSUMER_POLICY", SlowConsumerPolicy, SlowConsumerPolicy.DROP
            ),
            quota_streaming_calls=e.get("NATSGW_QUOTA_STREAMING_CALLS", _count, 256),
            shutdown_grace=e.get("NATSGW_SHUTDOWN_GRACE", _seconds, 10.0),
            workers=e.get("NATSGW_WORKERS", _workers, 1),
            log_level=e.get("NATSGW_LOG_LEVEL", _log_level, "info"),
            log_format=e.get("NATSGW_LOG_FORMAT", _log_format, "auto"),
            ack_token_secret=e.get("NATSGW_ACK_TOKEN_SECRET", _secret, ""),
            delivery_memory_size=e.get("NATSGW_DELIVERY_MEMORY_SIZE", _positive, 100_000),
            delivery_memory_ttl=e.get("NATSGW_DELIVERY_MEMORY_TTL", _seconds, 3600.0),
            stream_stats_window=e.get("NATSGW_STREAM_STATS_WINDOW", _seconds, 60.0),
            stream_publish_inflight=e.get("NATSGW_STREAM_PUBLISH_INFLIGHT", _positive, 256),
            kv_history=e.get("NATSGW_KV_HISTORY", _kv_history, 5),
            kv_ttl=e.get("NATSGW_KV_TTL", _seconds_or_zero, 0.0),
            kv_max_bytes=e.get("NATSGW_KV_MAX_BYTES", _size_or_zero, 0),
            kv_storage=e.get("NATSGW_KV_STORAGE", BucketStorageKind, BucketStorageKind.FILE),
            kv_replicas=e.get("NATSGW_KV_REPLICAS", _replicas, 1),
            object_ttl=e.get("NATSGW_OBJECT_TTL", _seconds_or_zero, 0.0),
            object_max_bytes=e.get("NATSGW_OBJECT_MAX_BYTES", _size_or_zero, 0),
            object_storage=e.get(
                "NATSGW_OBJECT_STORAGE", BucketStorageKind, BucketStorageKind.FILE
            ),
            object_replicas=e.get("NATSGW_OBJECT_REPLICAS", _replicas, 1),
            object_chunk_size=e.get("NATSGW_OBJECT_CHUNK_SIZE", _chunk_size, 512 * 1024),
            auth_mode=e.get("NATSGW_AUTH_MODE", AuthMode, AuthMode.TRUSTED),
            trusted_allow_remote=e.get("NATSGW_TRUSTED_ALLOW_REMOTE", _bool, False),
            auth_tokens_file=e.get("NATSGW_AUTH_TOKENS_FILE", Path, None),
            auth_act_as_role=e.get("NATSGW_AUTH_ACT_AS_ROLE", _text, "natsgw:act-as"),
            jwt_key_file=e.get("NATSGW_JWT_KEY_FILE", Path, None),
            jwt_jwks_url=e.get("NATSGW_JWT_JWKS_URL", _http_url, ""),
            jwt_algorithms=e.get("NATSGW_JWT_ALGORITHMS", _jwt_algorithms, ("RS256", "ES256")),
            jwt_issuer=e.get("NATSGW_JWT_ISSUER", str, ""),
            jwt_audience=e.get("NATSGW_JWT_AUDIENCE", str, ""),
            jwt_leeway=e.get("NATSGW_JWT_LEEWAY", _leeway, 30.0),
            jwt_jwks_refresh=e.get("NATSGW_JWT_JWKS_REFRESH", _seconds, 300.0),
            jwt_user_claim=e.get("NATSGW_JWT_USER_CLAIM", _text, "sub"),
            jwt_organizations_claim=e.get("NATSGW_JWT_ORGANIZATIONS_CLAIM", _text, "org_ids"),
            jwt_roles_claim=e.get("NATSGW_JWT_ROLES_CLAIM", _text, "roles"),
            tls_cert_file=e.get("NATSGW_TLS_CERT_FILE", Path, None),
            tls_key_file=e.get("NATSGW_TLS_KEY_FILE", Path, None),
            tls_client_ca_file=e.get("NATSGW_TLS_CLIENT_CA_FILE", Path, None),
            http_host=e.get("NATSGW_HTTP_HOST", str, ""),
            http_port=e.get("NATSGW_HTTP_PORT", _port_or_zero, None),
            audit_queue_size=e.get("NATSGW_AUDIT_QUEUE_SIZE", _positive, 10000),
            audit_data_plane=e.get("NATSGW_AUDIT_DATA_PLANE", _bool, False),
            loki_batch_size=e.get("NATSGW_LOKI_BATCH_SIZE", _positive, 500),
            loki_flush_interval=e.get("NATSGW_LOKI_FLUSH_INTERVAL", _seconds, 1.0),
            loki_tenant=e.get("NATSGW_LOKI_TENANT", str, ""),
            consul_service_address=e.get("NATSGW_CONSUL_SERVICE_ADDRESS", str, ""),
            consul_token=e.get("NATSGW_CONSUL_TOKEN", str, ""),
            consul_check_interval=e.get("NATSGW_CONSUL_CHECK_INTERVAL", _seconds, 10.0),
            consul_deregister_after=e.get("NATSGW_CONSUL_DEREGISTER_AFTER", _seconds, 60.0),
            consul_sync_interval=e.get("NATSGW_CONSUL_SYNC_INTERVAL", _seconds, 30.0),
            quota_streams=e.get("NATSGW_QUOTA_STREAMS", _count, 0),
            quota_consumers=e.get("NATSGW_QUOTA_CONSUMERS", _count, 0),
            quota_kv_buckets=e.get("NATSGW_QUOTA_KV_BUCKETS", _count, 0),
            quota_object_buckets=e.get("NATSGW_QUOTA_OBJECT_BUCKETS", _count, 0),
            quota_max_bytes=e.get("NATSGW_QUOTA_MAX_BYTES", _size_or_zero, 0),
            quota_publish_rate=e.get("NATSGW_QUOTA_PUBLISH_RATE", _rate, 0.0),
            quota_publish_burst=e.get("NATSGW_QUOTA_PUBLISH_BURST", _count, 0),
            quotas_file=e.get("NATSGW_QUOTAS_FILE", Path, None),
            max_batch_messages=e.get("NATSGW_MAX_BATCH_MESSAGES", _positive, 1000),
            max_ack_tokens=e.get("NATSGW_MAX_ACK_TOKENS", _positive, 1000),
            max_headers=e.get("NATSGW_MAX_HEADERS", _positive, 256),
            max_list_items=e.get("NATSGW_MAX_LIST_ITEMS", _positive, 1024),
            auth_recheck_interval=e.get("NATSGW_AUTH_RECHECK_INTERVAL", _seconds, 5.0),
            # per-tenant metrics and /status
            metrics_tenants=e.get("NATSGW_METRICS_TENANTS", _tenant_labels, ()),
            metrics_tenants_top=e.get("NATSGW_METRICS_TENANTS_TOP", _tenants_top, 10),
            status_tenant_names=e.get("NATSGW_STATUS_TENANT_NAMES", _bool, False),
            tenant_stats_max=e.get("NATSGW_TENANT_STATS_MAX", _tenant_stats_max, 10_000),
            # the embedded nats-server
            embedded_monitor=e.get("NATSGW_EMBEDDED_MONITOR", _bool, False),
            # before the caller is known
            request_read_timeout=e.get("NATSGW_REQUEST_READ_TIMEOUT", _seconds, 10.0),
            trusted_preauth_bytes=e.get("NATSGW_TRUSTED_PREAUTH_BYTES", _size, 64 * 1024),
            max_id_length=e.get("NATSGW_MAX_ID_LENGTH", _id_length, 256),
            # the NATS connections
            nats_read_window_bytes=e.get("NATSGW_NATS_READ_WINDOW_BYTES", _size, 32 * MIB),
            nats_down_unhealthy_after=e.get("NATSGW_NATS_DOWN_UNHEALTHY_AFTER", _seconds, 45.0),
            consume_max_bytes=e.get("NATSGW_CONSUME_MAX_BYTES", _size, 16 * MIB),
            object_read_window_bytes=e.get("NATSGW_OBJECT_READ_WINDOW_BYTES", _size, 4 * MIB),
            # the dead-letter relay
            dead_letter_relay=e.get("NATSGW_DEAD_LETTER_RELAY", _bool, True),
            dead_letter_attempts=e.get("NATSGW_DEAD_LETTER_ATTEMPTS", _positive, 20),
            dead_letter_retry_max=e.get("NATSGW_DEAD_LETTER_RETRY_MAX", _seconds, 60.0),
            # the HTTP/2 edge
            edge_max_connections=e.get("NATSGW_EDGE_MAX_CONNECTIONS", _count, 4096),
            edge_max_connections_per_peer=e.get(
                "NATSGW_EDGE_MAX_CONNECTIONS_PER_PEER", _count, 256
            ),
            edge_handshake_timeout=e.get("NATSGW_EDGE_HANDSHAKE_TIMEOUT", _seconds_or_zero, 10.0),
            edge_idle_timeout=e.get("NATSGW_EDGE_IDLE_TIMEOUT", _seconds_or_zero, 300.0),
            edge_resets_per_second=e.get("NATSGW_EDGE_RESETS_PER_SECOND", _count, 200),
            edge_pings_per_second=e.get("NATSGW_EDGE_PINGS_PER_SECOND", _count, 100),
            edge_settings_per_second=e.get("NATSGW_EDGE_SETTINGS_PER_SECOND", _count, 20),
            edge_outbound_buffer_bytes=e.get("NATSGW_EDGE_OUTBOUND_BUFFER_BYTES", _size, 16 * MIB),
            edge_write_stall_timeout=e.get(
                "NATSGW_EDGE_WRITE_STALL_TIMEOUT", _seconds_or_zero, 30.0
            ),
            # large request bodies
            request_buffer_bytes=e.get("NATSGW_REQUEST_BUFFER_BYTES", _size, 256 * MIB),
            request_buffer_bytes_per_connection=e.get(
                "NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION", _size_or_zero, 0
            ),
        ).validated()

    def validated(self) -> Settings:
        """Cross-setting rules; raises ConfigError naming the variables involved."""
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ConfigError("NATSGW_TLS_KEY_FILE is set without NATSGW_TLS_CERT_FILE")
        if self.tls_cert_file is not None and self.tls_key_file is None:
            raise ConfigError("NATSGW_TLS_CERT_FILE is set without NATSGW_TLS_KEY_FILE")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError(
                "NATSGW_TLS_CLIENT_CA_FILE (mutual TLS) needs NATSGW_TLS_CERT_FILE and "
                "NATSGW_TLS_KEY_FILE"
            )
        if 0 < self.subscription_buffer_bytes < self.max_message_size:
            raise ConfigError(
                f"NATSGW_SUBSCRIPTION_BUFFER_BYTES={self.subscription_buffer_bytes} is below "
                f"NATSGW_MAX_MESSAGE_SIZE={self.max_message_size}: a message the gateway accepts "
                "could never be delivered to a stream. Raise it, or leave it unset (twice the "
                "message size)"
            )
        if self.auth_mode is AuthMode.TOKEN and self.auth_tokens_file is None:
            raise ConfigError("NATSGW_AUTH_MODE=token needs NATSGW_AUTH_TOKENS_FILE")
        if self.auth_mode is AuthMode.JWT:
            if (self.jwt_key_file is None) == (not self.jwt_jwks_url):
                raise ConfigError(
                    "NATSGW_AUTH_MODE=jwt needs exactly one of NATSGW_JWT_KEY_FILE and "
                    "NATSGW_JWT_JWKS_URL"
                )
            if not self.jwt_audience:
                raise ConfigError(
                    "NATSGW_AUTH_MODE=jwt needs NATSGW_JWT_AUDIENCE (the audience tokens for "
                    "this gateway carry), so tokens minted for other services are refused"
                )
        if (
            self.auth_mode is AuthMode.TRUSTED
            and not self.trusted_allow_remote
            and not is_loopback(self.grpc_host)
        ):
            raise ConfigError(
                "NATSGW_AUTH_MODE=trusted takes every caller's user_id on trust, so it only "
                f"listens on loopback; GRPC_HOST={self.grpc_host!r} is not. Use "
                "NATSGW_AUTH_MODE=token or jwt, or set NATSGW_TRUSTED_ALLOW_REMOTE=true to "
                "accept that any client reaching the port can act as any user"
            )
        # per-tenant metrics and /status
        for label in self.metrics_tenants:
            if not _TENANT_LABEL.fullmatch(label):
                raise ConfigError(
                    f"NATSGW_METRICS_TENANTS: {mask_text(label)[:40]!r} is not user:ID or "
                    "organization:ID"
                )
        if not 0 <= self.metrics_tenants_top <= 1000:
            raise ConfigError("NATSGW_METRICS_TENANTS_TOP must be from 0 to 1000")
        if self.tenant_stats_max < 1:
            raise ConfigError("NATSGW_TENANT_STATS_MAX must be at least 1")
        # before the caller is known
        if self.trusted_preauth_bytes < 1024:
            raise ConfigError(
                f"NATSGW_TRUSTED_PREAUTH_BYTES={self.trusted_preauth_bytes} must be at least 1KiB "
                "(a request's ids must fit in it)"
            )
        if not 1 <= self.max_id_length <= 65536:
            raise ConfigError(f"NATSGW_MAX_ID_LENGTH={self.max_id_length} must be 1 to 65536")
        # the NATS connections
        if self.nats_read_window_bytes < MIB:
            raise ConfigError(
                f"NATSGW_NATS_READ_WINDOW_BYTES={self.nats_read_window_bytes} is below 1MiB: "
                "reads would crawl; the default is 32MiB (keep it below nats-server's "
                "max_pending, 64MiB by default)"
            )
        if self.object_read_window_bytes > self.nats_read_window_bytes:
            raise ConfigError(
                f"NATSGW_OBJECT_READ_WINDOW_BYTES={self.object_read_window_bytes} is above "
                f"NATSGW_NATS_READ_WINDOW_BYTES={self.nats_read_window_bytes}: one object read "
                "may not have more in transit than the whole connection"
            )
        # the dead-letter relay
        if not 1 <= self.dead_letter_attempts <= 1000:
            raise ConfigError(
                f"NATSGW_DEAD_LETTER_ATTEMPTS={self.dead_letter_attempts} must be 1 to 1000"
            )
        if not 1.0 <= self.dead_letter_retry_max <= 3600.0:
            raise ConfigError(
                f"NATSGW_DEAD_LETTER_RETRY_MAX={self.dead_letter_retry_max:g} must be 1 to 3600 s"
            )
        # the HTTP/2 edge
        if 0 < self.edge_max_connections < self.edge_max_connections_per_peer:
            raise ConfigError(
                f"NATSGW_EDGE_MAX_CONNECTIONS_PER_PEER={self.edge_max_connections_per_peer} is "
                f"above NATSGW_EDGE_MAX_CONNECTIONS={self.edge_max_connections}: lower it, or "
                "raise the total"
            )
        if self.edge_outbound_buffer_bytes < 256 * 1024:
            raise ConfigError(
                f"NATSGW_EDGE_OUTBOUND_BUFFER_BYTES={self.edge_outbound_buffer_bytes} is below "
                "256KiB: a few frames of one answer would already close the connection"
            )
        # large request bodies
        if self.request_buffer_bytes < 2 * self.max_message_size:
            raise ConfigError(
                f"NATSGW_REQUEST_BUFFER_BYTES={self.request_buffer_bytes} is below twice "
                f"NATSGW_MAX_MESSAGE_SIZE={self.max_message_size}: two large requests at once "
                "would already be refused"
            )
        per_connection = self.request_buffer_bytes_per_connection
        if per_connection and not (
            self.max_message_size <= per_connection <= self.request_buffer_bytes
        ):
            raise ConfigError(
                f"NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION={per_connection} must be 0 (4 x "
                f"NATSGW_MAX_MESSAGE_SIZE) or from NATSGW_MAX_MESSAGE_SIZE={self.max_message_size} "
                f"to NATSGW_REQUEST_BUFFER_BYTES={self.request_buffer_bytes}"
            )
        return self


#: Settings read from the original service's variable names; every other one is NATSGW_<FIELD>.
_SEED_VARIABLES = {
    "nats_urls": "NATS_URLS",
    "nats_username": "NATS_USERNAME",
    "nats_password": "NATS_PASSWORD",
    "nats_token": "NATS_TOKEN",
    "nats_cluster_id": "NATS_CLUSTER_ID",
    "jetstream_enabled": "NATS_JETSTREAM_ENABLED",
    "jetstream_domain": "NATS_JETSTREAM_DOMAIN",
    "grpc_host": "GRPC_HOST",
    "grpc_port": "GRPC_PORT",
    "service_name": "SERVICE_NAME",
    "service_hostname": "SERVICE_HOSTNAME",
    "loki_url": "LOKI_URL",
    "consul_enabled": "CONSUL_ENABLED",
    "consul_host": "CONSUL_HOST",
    "consul_port": "CONSUL_PORT",
}

#: NATSGW_ variables read by natsgw's client commands (pub, sub, smoke ...), not by the gateway.
CLIENT_VARIABLES = frozenset(
    {"NATSGW_TARGET", "NATSGW_TOKEN", "NATSGW_TOKEN_FILE", "NATSGW_USER_ID"}
)


def variable_name(field: str) -> str:
    """The environment variable that sets ``Settings.<field>``."""
    return _SEED_VARIABLES.get(field) or f"NATSGW_{field.upper()}"


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``NATSGW_*`` variables natsgw does not read (a likely typo), each with the closest name."""
    known = {variable_name(f) for f in Settings.__slots__} | CLIENT_VARIABLES
    return [
        (name, next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.75)), None))
        for name in sorted(env)
        if name.startswith("NATSGW_") and name not in known
    ]


def describe(settings: Settings) -> list[tuple[str, str]]:
    """Every setting as (variable, value as one would write it), secrets masked."""
    return [
        (variable_name(f), _plain(variable_name(f), getattr(settings, f)))
        for f in Settings.__slots__
    ]


def _plain(name: str, value: object) -> str:
    if value is None:
        return ""
    if is_secret_name(name):
        return MASK if value else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(_plain(name, v) for v in value)
    return mask_text(str(value))  # StrEnum: its value; Path: the path; URLs: no password


class _Env:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            shown = shown_setting(name, raw) if is_secret_name(name) else repr(mask_text(raw))
            raise ConfigError(f"{name}={shown} is invalid: {exc}") from None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "natsgw"


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _text(raw: str) -> str:
    """Any text; an empty value never gets here (it means "use the default")."""
    return raw


def _int(raw: str, low: int, high: int) -> int:
    value = int(raw)
    if not low <= value <= high:
        raise ValueError(f"expected an integer from {low} to {high}")
    return value


def _port(raw: str) -> int:
    return _int(raw, 1, 65535)


def _port_or_zero(raw: str) -> int:
    return _int(raw, 0, 65535)


def _count(raw: str) -> int:
    return _int(raw, 0, 2**31 - 1)


def _rate(raw: str) -> float:
    value = float(raw[:-2] if raw.endswith("/s") else raw)
    if not 0 <= value <= 1e9:
        raise ValueError("expected a rate per second, 0 (unlimited) or more")
    return value


def _leeway(raw: str) -> float:
    value = float(raw[:-1] if raw.endswith("s") else raw)
    if not 0 <= value <= 600:
        raise ValueError("expected seconds, from 0 to 600")
    return value


_JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "HS256", "HS384", "HS512")


def _jwt_algorithms(raw: str) -> tuple[str, ...]:
    algs = tuple(a.strip().upper() for a in raw.split(",") if a.strip())
    for alg in algs:
        if alg not in _JWT_ALGORITHMS:
            raise ValueError(f"{alg!r} is not one of {', '.join(_JWT_ALGORITHMS)}")
    if not algs:
        raise ValueError("name at least one algorithm")
    return algs


def _workers(raw: str) -> int:
    return _int(raw, 1, 64)


def _positive(raw: str) -> int:
    return _int(raw, 1, 2**31 - 1)


_SIZE_RE = re.compile(r"^(\d+)\s*(|b|kib|kb|k|mib|mb|m|gib|gb|g)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MIB, "mb": MIB, "mib": MIB}
_SIZE_UNITS |= {"g": 1024 * MIB, "gb": 1024 * MIB, "gib": 1024 * MIB}


def _size(raw: str) -> int:
    """Bytes, optionally with a binary unit: ``10485760``, ``10MiB``, ``512k``."""
    match = _SIZE_RE.fullmatch(raw)
    if not match:
        raise ValueError("expected a size such as 10485760, 512KiB or 10MiB")
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value < 1:
        raise ValueError("must be positive")
    return value


def _seconds(raw: str) -> float:
    value = float(raw[:-1] if raw.endswith("s") else raw)
    if not 0 < value < 86400:
        raise ValueError("expected seconds, greater than 0 and below 86400")
    return value


def _size_or_zero(raw: str) -> int:
    """A size, or 0 for "no limit"."""
    return 0 if raw == "0" else _size(raw)


def _seconds_or_zero(raw: str) -> float:
    """Seconds (as for _seconds, up to ten years), or 0 for "forever"."""
    value = float(raw[:-1] if raw.endswith("s") else raw)
    if not 0 <= value <= 10 * 365 * 86400:
        raise ValueError("expected seconds, 0 (forever) or more")
    return value


def _id_length(raw: str) -> int:
    return _int(raw, 1, 65536)


def _kv_history(raw: str) -> int:
    return _int(raw, 1, 64)


def _replicas(raw: str) -> int:
    return _int(raw, 1, 5)


def _chunk_size(raw: str) -> int:
    value = _size(raw)
    if not 1024 <= value <= 8 * MIB:
        raise ValueError("expected a chunk size from 1KiB to 8MiB")
    return value


def _urls(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        if not re.fullmatch(r"(nats|tls|ws|wss)://\S+", url):
            raise ValueError(f"{url!r} is not a nats://, tls://, ws:// or wss:// URL")
    return urls


def _http_url(raw: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", raw):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def _root(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", raw):
        raise ValueError("expected 1 to 32 letters or digits")
    return raw


def _log_level(raw: str) -> str:
    level = raw.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError("expected debug, info, warning or error")
    return level


class SecretStr(str):
    """A secret setting: a plain str to use, but printed (repr) as ``'***'``."""

    def __repr__(self) -> str:
        return "'***'" if self else "''"


def _secret(raw: str) -> str:
    if len(raw.encode()) < 16:
        raise ValueError("must be at least 16 bytes long")
    return SecretStr(raw)


def _log_format(raw: str) -> str:
    fmt = raw.lower()
    if fmt not in ("auto", "json", "console"):
        raise ValueError("expected auto (console on a terminal, else json), json or console")
    return fmt


# -- per-tenant metrics and /status: value parsers -----------------------------------------------

_TENANT_LABEL = re.compile(r"(user|organization):\S{1,256}")


def _tenant_labels(raw: str) -> tuple[str, ...]:
    labels = tuple(part.strip() for part in raw.split(",") if part.strip())
    for label in labels:
        if not _TENANT_LABEL.fullmatch(label):
            raise ValueError(
                f"{label[:40]!r} is not user:ID or organization:ID (comma-separated list)"
            )
    return labels


def _tenants_top(raw: str) -> int:
    return _int(raw, 0, 1000)


def _tenant_stats_max(raw: str) -> int:
    return _int(raw, 1, 10_000_000)
