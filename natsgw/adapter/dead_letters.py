"""JetStream's delivery advisories, kept in a stream natsgw owns, for the dead-letter relay.

NATS publishes ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`` when a
message reached its consumer's ``max_deliver`` and ``...MSG_TERMINATED...`` when one was
terminated; a core subscription would miss them while no gateway runs and would hand each to
every replica. So they are captured by a work-queue stream (``<root>_ADVISORIES``, a name no
tenant mapping can produce: tenant streams are ``<root>-K-name``) and read through ONE durable
pull consumer shared by every replica: each advisory goes to one replica at a time, and is acked
only after its copy is stored. This module knows NATS's subjects and advisory JSON; what to do
with an advisory is :mod:`natsgw.service.dead_letters`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import structlog

from natsgw.adapter.jetstream import JetStreamAdapter, PullPipe, ack_payload
from natsgw.adapter.types import ConsumerSpec, JetStreamDelivery
from natsgw.errors import AlreadyExists

log = structlog.get_logger("natsgw.adapter.dead_letters")

_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER"
ADVISORY_SUBJECTS = (f"{_ADVISORY}.MAX_DELIVERIES.*.*", f"{_ADVISORY}.MSG_TERMINATED.*.*")
#: The shared durable every replica pulls from.
RELAY_CONSUMER = "dead-letters"
#: A relay replica that took an advisory and vanished leaves it to another after this long.
RELAY_ACK_WAIT = 30.0
#: Bounds of the advisory stream: advisories are small (~300 bytes) and acked within seconds.
ADVISORY_MAX_MSGS = 100_000
ADVISORY_MAX_BYTES = 64 * 1024 * 1024
ADVISORY_MAX_AGE = 7 * 86400.0

MAX_DELIVERIES = "max_deliveries"
TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Advisory:
    """One "gave up on this message" advisory, NATS names."""

    cause: str  # MAX_DELIVERIES | TERMINATED
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int
    reason: str = ""


def parse_advisory(data: bytes) -> Advisory | None:
    """The advisory's facts, or None when it is not one the relay reads."""
    try:
        raw = json.loads(data)
        kind = str(raw.get("type", ""))
        cause = {
            "io.nats.jetstream.advisory.v1.max_deliver": MAX_DELIVERIES,
            "io.nats.jetstream.advisory.v1.terminated": TERMINATED,
        }.get(kind)
        if cause is None:
            return None
        return Advisory(
            cause=cause,
            stream=str(raw["stream"]),
            consumer=str(raw["consumer"]),
            stream_seq=int(raw["stream_seq"]),
            deliveries=int(raw.get("deliveries", 0)),
            reason=str(raw.get("reason", "") or ""),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class AdvisoryLog:
    """The advisory stream and its shared relay consumer."""

    def __init__(self, js: JetStreamAdapter, root: str) -> None:
        self.js = js
        self.stream = f"{root}_ADVISORIES"
        self._pipe: PullPipe | None = None

    async def ensure(self) -> None:
        """Create the stream and the relay consumer (idempotent; an existing one is kept)."""
        config = {
            "name": self.stream,
            "subjects": list(ADVISORY_SUBJECTS),
            "retention": "workqueue",
            "storage": "file",
            "max_msgs": ADVISORY_MAX_MSGS,
            "max_bytes": ADVISORY_MAX_BYTES,
            "max_age": int(ADVISORY_MAX_AGE * 1e9),
            "discard": "old",
            "num_replicas": 1,
        }
        try:
            await self.js.create_stream(config, what="dead-letter advisory stream")
        except AlreadyExists:  # made by another version's settings: keep it
            log.info("dead_letter_advisory_stream_kept", stream=self.stream)
        spec = ConsumerSpec(
            durable_name=RELAY_CONSUMER,
            ack_policy="explicit",
            ack_wait=RELAY_ACK_WAIT,
            max_deliver=-1,  # the relay decides when to give up (bounded attempts)
            max_ack_pending=1000,
        )
        try:
            await self.js.add_consumer(self.stream, spec)
        except AlreadyExists:
            log.info("dead_letter_relay_consumer_kept", stream=self.stream)

    async def open(self, capacity: int) -> None:
        """The relay's one pull subscription, kept until :meth:`close` (Unavailable while NATS
        is not connected)."""
        if self._pipe is None:
            self._pipe = await self.js.open_pull(self.stream, RELAY_CONSUMER, capacity)

    async def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.close()

    async def next(self, batch: int, wait: float) -> list[JetStreamDelivery]:
        """Advisories for this replica (NOT_FOUND while no consumer ever had a dead-letter
        stream, so nothing was set up)."""
        await self.open(batch)
        assert self._pipe is not None
        return await self.js.fetch_on(self._pipe, batch, wait)

    async def done(self, delivery: JetStreamDelivery) -> None:
        """The advisory is dealt with: it leaves the work queue."""
        await self.js.ack(delivery.reply, ack_payload("ack"))

    async def retry(self, delivery: JetStreamDelivery, delay: float) -> None:
        """Have it again after ``delay`` seconds (any replica)."""
        await self.js.ack(delivery.reply, ack_payload("nak", delay))

    async def give_up(self, delivery: JetStreamDelivery) -> None:
        await self.js.ack(delivery.reply, ack_payload("term", reason="dead-letter relay gave up"))
