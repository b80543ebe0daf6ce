"""JetStream wire messages <-> the adapter's plain values, in the tenant's view.

Conversions of stream and consumer configs and infos (names and subjects mapped by
natsgw.tenancy), proto3 zero-value conventions, and error messages rewritten so they name
streams and subjects the way the tenant does.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import TypedDict, TypeVar

from natsgw._generated.isa import nats as pb
from natsgw.adapter.consumer_control import PauseState
from natsgw.adapter.types import (
    ConsumerDetails,
    ConsumerSpec,
    StreamDetails,
    StreamSpec,
)
from natsgw.errors import GatewayError, InvalidArgument
from natsgw.tenancy import Namespace, public_metadata, public_text, tenant_metadata

#: Set by the gateway on every stream publish (it names the NATS stream): not shown to clients.
HIDDEN_HEADERS = frozenset({"Nats-Expected-Stream"})

_STORAGE = {pb.StorageType.STORAGE_FILE: "file", pb.StorageType.STORAGE_MEMORY: "memory"}
_RETENTION = {
    pb.RetentionPolicy.RETENTION_LIMITS: "limits",
    pb.RetentionPolicy.RETENTION_INTEREST: "interest",
    pb.RetentionPolicy.RETENTION_WORK_QUEUE: "workqueue",
}
_DISCARD = {pb.DiscardPolicy.DISCARD_OLD: "old", pb.DiscardPolicy.DISCARD_NEW: "new"}
_DELIVER = {
    pb.DeliveryPolicy.DELIVERY_ALL: "all",
    pb.DeliveryPolicy.DELIVERY_LAST: "last",
    pb.DeliveryPolicy.DELIVERY_NEW: "new",
    pb.DeliveryPolicy.DELIVERY_BY_START_SEQUENCE: "by_start_sequence",
    pb.DeliveryPolicy.DELIVERY_BY_START_TIME: "by_start_time",
    pb.DeliveryPolicy.DELIVERY_LAST_PER_SUBJECT: "last_per_subject",
}
_ACK_POLICY = {
    pb.AckPolicy.ACK_EXPLICIT: "explicit",
    pb.AckPolicy.ACK_ALL: "all",
    pb.AckPolicy.ACK_NONE: "none",
}
_REPLAY = {pb.ReplayPolicy.REPLAY_INSTANT: "instant", pb.ReplayPolicy.REPLAY_ORIGINAL: "original"}
#: The wire's ack actions, as the adapter names them.
ACK_ACTIONS = {
    pb.AckAction.ACK: "ack",
    pb.AckAction.NAK: "nak",
    pb.AckAction.IN_PROGRESS: "in_progress",
    pb.AckAction.TERMINATE: "term",
}


K = TypeVar("K")
V = TypeVar("V")


def _reverse(mapping: dict[K, V]) -> dict[V, K]:
    return {v: k for k, v in mapping.items()}


_STORAGE_OUT = _reverse(_STORAGE)
_RETENTION_OUT = _reverse(_RETENTION)
_DISCARD_OUT = _reverse(_DISCARD)
_DELIVER_OUT = _reverse(_DELIVER)
_ACK_POLICY_OUT = _reverse(_ACK_POLICY)
_REPLAY_OUT = _reverse(_REPLAY)


# -- wire <-> plain values ------------------------------------------------------------------------


def seconds_field(
    value: datetime.timedelta | None, field: str, *, maximum: float | None = None
) -> float:
    if value is None:
        return 0.0
    seconds = value.total_seconds()
    if seconds < 0:
        raise InvalidArgument(field, f"must not be negative (got {seconds:g}s)")
    if maximum is not None and seconds > maximum:
        raise InvalidArgument(field, f"must be at most {maximum:g}s (got {seconds:g}s)")
    return seconds


def _limit(value: int, field: str) -> int:
    """0 and -1 mean unlimited (NATS's -1); anything else below is refused."""
    if value < -1:
        raise InvalidArgument(field, f"must be positive, or 0 for unlimited (got {value})")
    return -1 if value in (0, -1) else value


def _limit_out(value: int) -> int:
    return 0 if value < 0 else value


def wire_enum(mapping: dict[K, V], value: K, field: str) -> V:
    try:
        return mapping[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown value {int(value)}") from None  # type: ignore[call-overload]


def stream_spec(
    ns: Namespace, config: pb.StreamConfig, name: str, field: str = "config"
) -> StreamSpec:
    """The NATS stream a tenant's StreamConfig asks for (``name`` is already mapped)."""
    subjects = tuple(ns.pattern(s, f"{field}.subjects[{i}]") for i, s in enumerate(config.subjects))
    if not subjects:
        raise InvalidArgument(f"{field}.subjects", "at least one subject is required")
    max_per_subject = _limit(config.max_msgs_per_subject, f"{field}.max_msgs_per_subject")
    discard = wire_enum(_DISCARD, config.discard, f"{field}.discard")
    if config.discard_new_per_subject:
        if max_per_subject <= 0:
            raise InvalidArgument(
                f"{field}.discard_new_per_subject",
                "needs max_msgs_per_subject > 0 (the per-subject limit it enforces)",
            )
        discard = "new"
    if config.replicas < 0:
        raise InvalidArgument(f"{field}.replicas", f"must be 1 or more (got {config.replicas})")
    return StreamSpec(
        name=name,
        subjects=subjects,
        storage=wire_enum(_STORAGE, config.storage, f"{field}.storage"),
        retention=wire_enum(_RETENTION, config.retention, f"{field}.retention"),
        max_msgs=_limit(config.max_msgs, f"{field}.max_msgs"),
        max_bytes=_limit(config.max_bytes, f"{field}.max_bytes"),
        max_age=seconds_field(config.max_age, f"{field}.max_age"),
        max_msg_size=_limit(config.max_msg_size, f"{field}.max_msg_size"),
        max_msgs_per_subject=max_per_subject,
        replicas=config.replicas or 1,
        discard=discard,
        discard_new_per_subject=config.discard_new_per_subject,
        duplicate_window=seconds_field(config.duplicate_window, f"{field}.duplicate_window"),
        **_ttl_stream_fields(config, field),
    )


def clamp32(value: int) -> int:
    return max(-(2**31), min(2**31 - 1, value))


def stream_info_out(ns: Namespace, details: StreamDetails) -> pb.StreamInfo:
    spec, state = details.spec, details.state
    name = ns.from_name(spec.name) or ""
    config = pb.StreamConfig(
        name=name,
        subjects=[s for s in (ns.from_subject(x) for x in spec.subjects) if s is not None],
        storage=_STORAGE_OUT.get(spec.storage, pb.StorageType.STORAGE_FILE),
        max_msgs=clamp32(_limit_out(spec.max_msgs)),
        max_bytes=_limit_out(spec.max_bytes),
        max_age=datetime.timedelta(seconds=spec.max_age),
        max_msg_size=clamp32(_limit_out(spec.max_msg_size)),
        replicas=spec.replicas,
        discard_new_per_subject=spec.discard_new_per_subject,
        max_msgs_per_subject=_limit_out(spec.max_msgs_per_subject),
        discard=_DISCARD_OUT.get(spec.discard, pb.DiscardPolicy.DISCARD_OLD),
        duplicate_window=datetime.timedelta(seconds=spec.duplicate_window),
        retention=_RETENTION_OUT.get(spec.retention, pb.RetentionPolicy.RETENTION_LIMITS),
        allow_msg_ttl=spec.allow_msg_ttl,
        subject_delete_marker_ttl=(
            datetime.timedelta(seconds=spec.subject_delete_marker_ttl)
            if spec.subject_delete_marker_ttl
            else None
        ),
    )
    return pb.StreamInfo(
        name=name,
        config=config,
        state=pb.StreamState(
            messages=state.messages,
            bytes=state.bytes,
            first_seq=state.first_seq,
            last_seq=state.last_seq,
            first_ts=state.first_ts,
            last_ts=state.last_ts,
            num_subjects=clamp32(state.num_subjects),
            consumer_count=clamp32(state.consumer_count),
        ),
        created=details.created,
    )


def consumer_spec(ns: Namespace, config: pb.ConsumerConfig, field: str = "config") -> ConsumerSpec:
    name = ns.consumer(config.name, f"{field}.name") if config.name else ""
    durable = (
        ns.consumer(config.durable_name, f"{field}.durable_name") if config.durable_name else ""
    )
    if name and durable and name != durable:
        raise InvalidArgument(
            f"{field}.name",
            f"{name!r} differs from durable_name {durable!r}; set one, or both equal",
        )
    policy = wire_enum(_DELIVER, config.delivery_policy, f"{field}.delivery_policy")
    if policy == "by_start_sequence" and config.opt_start_seq <= 0:
        raise InvalidArgument(f"{field}.opt_start_seq", "DELIVERY_BY_START_SEQUENCE needs it > 0")
    if policy == "by_start_time" and config.opt_start_time is None:
        raise InvalidArgument(f"{field}.opt_start_time", "DELIVERY_BY_START_TIME needs it set")
    if config.opt_start_seq < 0:
        raise InvalidArgument(f"{field}.opt_start_seq", "must not be negative")
    if config.max_ack_pending < -1:
        raise InvalidArgument(f"{field}.max_ack_pending", "must be positive, or 0 for the default")
    ack_policy = wire_enum(_ACK_POLICY, config.ack_policy, f"{field}.ack_policy")
    max_deliver = _limit(config.max_deliver, f"{field}.max_deliver")
    backoff = backoff_field(config.backoff, f"{field}.backoff", ack_policy, max_deliver)
    dead_letter = ""
    if config.dead_letter_stream:
        ns.stream(config.dead_letter_stream, f"{field}.dead_letter_stream")  # a valid name
        if ack_policy == "none":
            raise InvalidArgument(
                f"{field}.dead_letter_stream",
                "needs an ack policy other than ACK_NONE (nothing is ever given up otherwise)",
            )
        dead_letter = config.dead_letter_stream
    return ConsumerSpec(
        name=name,
        durable_name=durable,
        filter_subject=(
            ns.pattern(config.filter_subject, f"{field}.filter_subject")
            if config.filter_subject
            else ""
        ),
        deliver_policy=policy,
        ack_policy=ack_policy,
        ack_wait=seconds_field(config.ack_wait, f"{field}.ack_wait"),
        max_deliver=max_deliver,
        replay_policy=wire_enum(_REPLAY, config.replay_policy, f"{field}.replay_policy"),
        opt_start_seq=config.opt_start_seq if policy == "by_start_sequence" else 0,
        opt_start_time=config.opt_start_time if policy == "by_start_time" else None,
        max_ack_pending=config.max_ack_pending,
        inactive_threshold=seconds_field(config.inactive_threshold, f"{field}.inactive_threshold"),
        **_control_fields(ns, config, field),
        backoff=backoff,
        dead_letter=dead_letter,
    )


# --- dead letters ---
#: Most backoff entries, and the range of each (NATS's own rule is only "positive").
MAX_BACKOFF = 100
MIN_BACKOFF_DELAY = 0.001
MAX_BACKOFF_DELAY = 7 * 86400.0


def backoff_field(
    delays: list[datetime.timedelta], field: str, ack_policy: str, max_deliver: int
) -> tuple[float, ...]:
    """Redelivery delays in seconds, checked as NATS documents them (nats-server 2.15 itself
    accepts a zero delay and more delays than deliveries, which then mean nothing)."""
    if not delays:
        return ()
    if len(delays) > MAX_BACKOFF:
        raise InvalidArgument(field, f"has {len(delays)} delays; at most {MAX_BACKOFF}")
    if ack_policy == "none":
        raise InvalidArgument(field, "needs an ack policy other than ACK_NONE (nothing redelivers)")
    if max_deliver != -1 and max_deliver <= len(delays):
        raise InvalidArgument(
            field,
            f"has {len(delays)} delays, so max_deliver must be unlimited (0) or more than "
            f"{len(delays)} (got {max_deliver}): delay N is the wait before delivery N+1",
        )
    out: list[float] = []
    for index, delay in enumerate(delays):
        seconds = delay.total_seconds()
        if not MIN_BACKOFF_DELAY <= seconds <= MAX_BACKOFF_DELAY:
            raise InvalidArgument(
                f"{field}[{index}]",
                f"must be from 1ms to {MAX_BACKOFF_DELAY / 86400:g} days (got {seconds:g}s)",
            )
        out.append(seconds)
    return tuple(out)


def consumer_info_out(ns: Namespace, details: ConsumerDetails) -> pb.ConsumerInfo:
    spec, state = details.spec, details.state
    config = pb.ConsumerConfig(
        name=spec.name,
        durable_name=spec.durable_name,
        filter_subject=(ns.from_subject(spec.filter_subject) or "") if spec.filter_subject else "",
        delivery_policy=_DELIVER_OUT.get(spec.deliver_policy, pb.DeliveryPolicy.DELIVERY_ALL),
        ack_policy=_ACK_POLICY_OUT.get(spec.ack_policy, pb.AckPolicy.ACK_EXPLICIT),
        ack_wait=datetime.timedelta(seconds=spec.ack_wait),
        max_deliver=clamp32(_limit_out(spec.max_deliver)),
        replay_policy=_REPLAY_OUT.get(spec.replay_policy, pb.ReplayPolicy.REPLAY_INSTANT),
        opt_start_seq=spec.opt_start_seq,
        opt_start_time=spec.opt_start_time,
        max_ack_pending=clamp32(_limit_out(spec.max_ack_pending)),
        inactive_threshold=(
            datetime.timedelta(seconds=spec.inactive_threshold) if spec.inactive_threshold else None
        ),
        filter_subjects=[s for s in map(ns.from_subject, spec.filter_subjects) if s is not None],
        description=spec.description,
        metadata=public_metadata(spec.metadata),
        pause_until=spec.pause_until,
        backoff=[datetime.timedelta(seconds=delay) for delay in spec.backoff],
        dead_letter_stream=spec.dead_letter,
    )
    return pb.ConsumerInfo(
        stream_name=ns.from_name(details.stream) or "",
        name=details.name,
        config=config,
        state=pb.ConsumerState(
            delivered_seq=state.delivered_stream_seq,
            ack_floor_seq=state.ack_floor_stream_seq,
            num_pending=state.num_pending,
            num_redelivered=state.num_redelivered,
            delivered_consumer_seq=state.delivered_consumer_seq,
            ack_floor_consumer_seq=state.ack_floor_consumer_seq,
            num_ack_pending=state.num_ack_pending,
            num_waiting=state.num_waiting,
            paused=state.paused,
            pause_remaining=(
                datetime.timedelta(seconds=state.pause_remaining) if state.paused else None
            ),
            last_active=state.last_active,
        ),
        created=details.created,
    )


def status_code_of(exc: GatewayError) -> int:
    return int(exc.status.value)


def tenant_view(exc: GatewayError, root: str) -> GatewayError:
    """Rewrite NATS names in an error message the way the tenant names them (batch results)."""
    exc.message = public_text(exc.message, root)
    exc.args = (exc.message,)
    return exc


# -- consumer control and TTL -------------------------------------------------------------------

#: NATS's smallest per-message TTL and delete-marker TTL.
MIN_TTL = 1.0
#: Largest TTL accepted (100 years: far beyond any retention, well inside NATS's int64 nanos).
MAX_TTL = 100 * 365 * 86400.0
#: Longest consumer description, in UTF-8 bytes.
MAX_DESCRIPTION_BYTES = 4096
#: The header NATS reads a message's TTL from.
TTL_HEADER = "Nats-TTL"


def ttl_header(value: datetime.timedelta | None, field: str = "ttl", *, never: bool = False) -> str:
    """The ``Nats-TTL`` value for a wire ttl ("" for none): whole seconds, 1 s to 100 years."""
    if never:
        if value is not None:
            raise InvalidArgument(field, "set either ttl or ttl_never, not both")
        return "never"
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < MIN_TTL:
        raise InvalidArgument(
            field,
            f"must be at least 1s, NATS's smallest TTL (got {seconds:g}s); leave it unset "
            "for no TTL",
        )
    if seconds != int(seconds):
        raise InvalidArgument(
            field, f"must be whole seconds, as NATS keeps TTLs (got {seconds:g}s)"
        )
    if seconds > MAX_TTL:
        raise InvalidArgument(field, f"must be at most {MAX_TTL:g}s (got {seconds:g}s)")
    return f"{int(seconds)}s"


def with_ttl(
    headers: dict[str, str],
    value: datetime.timedelta | None,
    field: str = "ttl",
    *,
    never: bool = False,
) -> dict[str, str]:
    """``headers`` plus the TTL's header; a caller's own Nats-TTL beside a ttl is refused."""
    ttl = ttl_header(value, field, never=never)
    if not ttl:
        return headers
    if any(k.lower() == TTL_HEADER.lower() for k in headers):
        raise InvalidArgument(field, f"set either ttl or a {TTL_HEADER} header, not both")
    return {**headers, TTL_HEADER: ttl}


class _TTLFields(TypedDict):
    allow_msg_ttl: bool
    subject_delete_marker_ttl: float


class _ControlFields(TypedDict):
    filter_subjects: tuple[str, ...]
    description: str
    metadata: dict[str, str]
    pause_until: datetime.datetime | None


def _ttl_stream_fields(config: pb.StreamConfig, field: str) -> _TTLFields:
    marker = seconds_field(
        config.subject_delete_marker_ttl, f"{field}.subject_delete_marker_ttl", maximum=MAX_TTL
    )
    if 0 < marker < MIN_TTL:
        raise InvalidArgument(
            f"{field}.subject_delete_marker_ttl",
            f"must be at least 1s (got {marker:g}s), or unset for no delete markers",
        )
    return {"allow_msg_ttl": config.allow_msg_ttl, "subject_delete_marker_ttl": marker}


def keep_ttl(config: pb.StreamConfig, current: StreamSpec) -> pb.StreamConfig:
    """An UpdateStream config that keeps what proto3 cannot say "unchanged" about: TTLs once
    allowed stay allowed (NATS refuses turning them off; old clients never send the field), and
    an unset subject_delete_marker_ttl keeps the stream's (a zero duration removes it)."""
    marker = config.subject_delete_marker_ttl
    if marker is None and current.subject_delete_marker_ttl:
        marker = datetime.timedelta(seconds=current.subject_delete_marker_ttl)
    return dataclasses.replace(
        config,
        allow_msg_ttl=config.allow_msg_ttl or current.allow_msg_ttl,
        subject_delete_marker_ttl=marker,
    )


def _control_fields(ns: Namespace, config: pb.ConsumerConfig, field: str) -> _ControlFields:
    """The consumer-control part of a ConsumerSpec: filters mapped, metadata checked."""
    filters = tuple(
        ns.pattern(s, f"{field}.filter_subjects[{i}]") for i, s in enumerate(config.filter_subjects)
    )
    if filters and config.filter_subject:
        raise InvalidArgument(
            f"{field}.filter_subjects", "set either filter_subject or filter_subjects, not both"
        )
    if len(set(filters)) != len(filters):
        raise InvalidArgument(f"{field}.filter_subjects", "lists a subject twice")
    if len(config.description.encode()) > MAX_DESCRIPTION_BYTES:
        raise InvalidArgument(
            f"{field}.description", f"is longer than {MAX_DESCRIPTION_BYTES} bytes"
        )
    return {
        "filter_subjects": filters,
        "description": config.description,
        "metadata": tenant_metadata(config.metadata, f"{field}.metadata"),
        "pause_until": config.pause_until,
    }


def pause_out(state: PauseState) -> pb.PauseConsumerResponse:
    return pb.PauseConsumerResponse(
        paused=state.paused,
        pause_until=state.pause_until if state.paused else None,
        pause_remaining=(
            datetime.timedelta(seconds=state.pause_remaining) if state.paused else None
        ),
    )
