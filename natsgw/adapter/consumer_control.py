"""Consumer control on nats-server's own API: update, pause/resume and reset (seek).

Takes NATS names (already mapped by natsgw.tenancy) and plain values, like the rest of the
adapter; requests go through :meth:`natsgw.adapter.jetstream.JetStreamAdapter.api`, the one
JetStream request path. What nats-server 2.15.1 answers (checked with raw ``$JS.API`` requests):

- ``CONSUMER.CREATE.<stream>.<name>`` with ``"action": "update"`` changes a consumer in place;
  a consumer that does not exist is error 10149, a field that cannot change is 10012
  ("deliver policy can not be updated", ...). Both are read here, once, into NOT_FOUND and an
  INVALID_ARGUMENT naming the field as the wire calls it.
- ``CONSUMER.PAUSE.<stream>.<name>`` with ``pause_until`` pauses, with ``{}`` resumes; an update
  leaves a pause as it is.
- ``CONSUMER.RESET.<stream>.<name>`` with ``seq`` makes ``seq`` the next delivery (``0``: the
  consumer's configured start) and forgets outstanding deliveries, so seek needs no recreation.
- PAUSE and RESET on a stream that does not exist get no answer at all (a timeout), so both ask
  for the consumer's info first: a missing stream or consumer is NOT_FOUND, not DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from natsgw.adapter.errors import ApiError
from natsgw.adapter.jetstream import (
    JetStreamAdapter,
    _consumer_config,
    _consumer_details,
    format_time,
    parse_time,
)
from natsgw.adapter.types import ConsumerDetails, ConsumerSpec
from natsgw.errors import GatewayError, InvalidArgument, NotFound

#: nats-server's "consumer does not exist" (an update of a missing consumer).
_NO_CONSUMER = 10149
#: nats-server's "<field> can not be updated".
_NOT_UPDATABLE = 10012
_NS = 1_000_000_000

#: Which wire field (natsgw's ConsumerConfig) a "... can not be updated" refusal is about.
_REFUSED_FIELDS = (
    ("deliver policy", "delivery_policy"),
    ("ack policy", "ack_policy"),
    ("replay policy", "replay_policy"),
    ("start sequence", "opt_start_seq"),
    ("start time", "opt_start_time"),
    ("durable", "durable_name"),
    ("name", "name"),
)


@dataclass(frozen=True, slots=True)
class PauseState:
    paused: bool
    pause_until: datetime.datetime | None
    pause_remaining: float  # seconds


@dataclass(frozen=True, slots=True)
class ResetResult:
    details: ConsumerDetails
    #: The stream sequence the consumer delivers next.
    reset_seq: int


def _api_error(exc: GatewayError) -> ApiError | None:
    cause = exc.__cause__
    return cause if isinstance(cause, ApiError) else None


def refused_field(description: str, prefix: str = "config") -> str:
    """The wire field a nats-server "can not be updated" text names (``config`` if unknown)."""
    text = description.lower()
    for words, field in _REFUSED_FIELDS:
        if text.startswith(words):
            return f"{prefix}.{field}"
    return prefix


class ConsumerControl:
    """Update, pause, resume and reset consumers (NATS stream and consumer names)."""

    def __init__(self, js: JetStreamAdapter) -> None:
        self._js = js

    async def update(self, stream: str, spec: ConsumerSpec) -> ConsumerDetails:
        """Change an existing consumer to ``spec`` (named by its name or durable name)."""
        name = spec.durable_name or spec.name
        what = f"update consumer {name} of stream {stream}"
        body = {"stream_name": stream, "config": _consumer_config(spec), "action": "update"}
        try:
            response = await self._js.api(what, f"CONSUMER.CREATE.{stream}.{name}", body)
        except GatewayError as exc:
            raise _update_refused(exc, name, stream) from exc
        return _consumer_details(response)

    async def pause(self, stream: str, name: str, until: datetime.datetime | None) -> PauseState:
        """Pause until ``until``; ``None`` resumes now."""
        await self._js.consumer_info(stream, name)  # NOT_FOUND (the server would stay silent)
        body: dict[str, Any] = {} if until is None else {"pause_until": format_time(until)}
        verb = "resume" if until is None else "pause"
        response = await self._js.api(
            f"{verb} consumer {name} of stream {stream}", f"CONSUMER.PAUSE.{stream}.{name}", body
        )
        return _pause_state(response)

    async def reset(self, stream: str, name: str, seq: int) -> ResetResult:
        """Make stream sequence ``seq`` the consumer's next delivery (0: its configured start)."""
        await self._js.consumer_info(stream, name)  # NOT_FOUND (the server would stay silent)
        response = await self._js.api(
            f"reset consumer {name} of stream {stream}",
            f"CONSUMER.RESET.{stream}.{name}",
            {"seq": seq},
        )
        return ResetResult(_consumer_details(response), int(response.get("reset_seq", 0)))

    async def seq_at(self, stream: str, when: datetime.datetime) -> int:
        """The first stream sequence stored at or after ``when``; past the end: the next one."""
        found = await self._js.first_seq_since(stream, when)
        if found is not None:
            return found
        return (await self._js.stream_info(stream)).state.last_seq + 1


def _update_refused(exc: GatewayError, name: str, stream: str) -> GatewayError:
    api = _api_error(exc)
    if api is None:
        return exc
    if api.err_code == _NO_CONSUMER:
        return NotFound(f"consumer {name} of stream {stream} does not exist")
    if api.err_code == _NOT_UPDATABLE:
        return InvalidArgument(
            refused_field(api.description),
            f"cannot change on an existing consumer ({api.description}); delete and create "
            "the consumer to change it",
        )
    return exc


def _pause_state(response: Mapping[str, Any]) -> PauseState:
    return PauseState(
        paused=bool(response.get("paused", False)),
        pause_until=parse_time(response.get("pause_until")),
        pause_remaining=int(response.get("pause_remaining") or 0) / _NS,
    )
