"""The dead-letter relay: copies a message a consumer gave up on into its dead-letter stream.

A consumer created with ``dead_letter_stream`` keeps that name, in the tenant's terms, in its
NATS metadata (every replica sees it). When NATS gives up on a message (``max_deliver``
reached, or terminated) its advisory lands in the advisory stream
(:mod:`natsgw.adapter.dead_letters`); one replica at a time takes it from the shared durable and:

1. maps the advisory's stream to its tenant (:func:`natsgw.tenancy.namespace_of_stream`) and
   the consumer's dead-letter name into the SAME tenant (never another's, whatever the
   metadata says);
2. reads the message by sequence; one already gone is logged and counted, not copied;
3. stores the copy (original headers, minus NATS's control headers, plus ``natsgw-dead-letter-*``
   ones in the tenant's terms) with ``Nats-Msg-Id = <stream>:<consumer>:<seq>:<deliveries|term>``
   so a replay after a crash between store and ack is de-duplicated by NATS;
4. acks the advisory only then. A failure (dead-letter stream deleted, NATS unavailable) naks it
   for another attempt, 1 s doubling up to ``NATSGW_DEAD_LETTER_RETRY_MAX``, at most
   ``NATSGW_DEAD_LETTER_ATTEMPTS`` times, then gives up (logged, counted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Mapping, Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter

from natsgw.adapter.dead_letters import (
    MAX_DELIVERIES,
    TERMINATED,
    Advisory,
    AdvisoryLog,
    parse_advisory,
)
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.adapter.types import JetStreamDelivery, StoredMessage
from natsgw.config import Settings
from natsgw.errors import GatewayError, NotFound
from natsgw.pipeline.quotas import tenant_label
from natsgw.tenancy import Namespace, namespace_of_stream

log = structlog.get_logger("natsgw.service.dead_letters")

#: Headers of a dead-letter copy (the tenant's names of the original's subject, stream, ...).
H_SUBJECT = "natsgw-dead-letter-subject"
H_STREAM = "natsgw-dead-letter-stream"
H_CONSUMER = "natsgw-dead-letter-consumer"
H_SEQUENCE = "natsgw-dead-letter-sequence"
H_DELIVERIES = "natsgw-dead-letter-deliveries"
H_CAUSE = "natsgw-dead-letter-cause"  # max_deliveries | terminated
H_REASON = "natsgw-dead-letter-reason"  # the TERM reason, when one was given
H_TIME = "natsgw-dead-letter-time"  # when the original was stored
H_MSG_ID = "natsgw-dead-letter-msg-id"  # the original's Nats-Msg-Id

#: Advisories taken per pull, and how long one pull waits for the first.
RELAY_BATCH = 64
RELAY_WAIT = 5.0
#: Wait before looking again while nothing is set up (no consumer ever had a dead-letter stream).
IDLE_WAIT = 2.0
FIRST_RETRY = 1.0


def copy_subject(ns: Namespace, target_subjects: Sequence[str], original: str) -> str | None:
    """Where a copy of ``original`` (NATS subject) goes in the dead-letter stream (NATS
    subjects): its first subject when literal, ``<prefix>.<original in the tenant's terms>``
    when it is ``<prefix>.>``; None when neither applies (or the result is too long)."""
    if not target_subjects:
        return None
    first = ns.from_subject(target_subjects[0])
    if first is None:
        return None
    tokens = first.split(".")
    if "*" in tokens or (">" in tokens and tokens[-1] != ">") or tokens.count(">") > 1:
        return None
    if tokens[-1] != ">":
        return target_subjects[0]
    if len(tokens) < 2:
        return None
    view = ns.from_subject(original) or original
    try:
        return ns.subject(".".join([*tokens[:-1], view]))
    except GatewayError:
        return None


def copy_headers(
    ns: Namespace, advisory: Advisory, message: StoredMessage, consumer_stream: str
) -> dict[str, str]:
    """The original's own headers (not NATS's control ones) plus where it came from."""
    headers = {k: v for k, v in message.headers.items() if not k.lower().startswith("nats-")}
    original_id = message.headers.get("Nats-Msg-Id")
    if original_id:
        headers[H_MSG_ID] = original_id
    headers[H_SUBJECT] = ns.from_subject(message.subject) or ""
    headers[H_STREAM] = consumer_stream
    headers[H_CONSUMER] = advisory.consumer
    headers[H_SEQUENCE] = str(advisory.stream_seq)
    headers[H_DELIVERIES] = str(advisory.deliveries)
    headers[H_CAUSE] = advisory.cause
    if advisory.reason:
        headers[H_REASON] = advisory.reason.replace("\r", " ").replace("\n", " ")[:256]
    if message.time is not None:
        headers[H_TIME] = message.time.isoformat()
    return headers


def copy_id(stream: str, advisory: Advisory) -> str:
    """The copy's Nats-Msg-Id: one per (stream, consumer, message, give-up event)."""
    event = "term" if advisory.cause == TERMINATED else str(advisory.deliveries)
    return f"{stream}:{advisory.consumer}:{advisory.stream_seq}:{event}"


class CopyFailed(Exception):
    """The copy cannot be stored now (its dead-letter stream is missing or unusable)."""


class DeadLetterRelay:
    """This replica's share of the relay: one task, owned by the gateway (start/stop)."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamAdapter,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.js = js
        self.log = AdvisoryLog(js, settings.namespace_root)
        self.copier = DeadLetterCopier(js, settings.namespace_root)
        self.copies = Counter(
            "natsgw_dead_letters",
            "Advisories the dead-letter relay dealt with, by outcome (copied, source_gone, "
            "retried, gave_up, ignored)",
            ["outcome"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        #: The same counts as plain numbers (tests, the status page).
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._task: asyncio.Task[None] | None = None
        #: The advisory stream has been read: consumers rely on it, so it is made again if it
        #: disappears (until then nothing is made: a gateway nobody uses this with makes none).
        self.reading = False

    async def start(self) -> None:
        """Open the relay's pull subscription now (so it is there, steadily, from start-up:
        one subscription for the gateway's life) and start pulling."""
        if self._task is None:
            with contextlib.suppress(GatewayError):  # NATS not connected yet: the task retries
                await self.log.open(RELAY_BATCH)
            self._task = asyncio.create_task(self._run(), name="natsgw-dead-letters")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.log.close()

    def _counted(self, outcome: str) -> None:
        self.copies.labels(outcome).inc()
        self.outcomes[outcome] += 1

    async def _run(self) -> None:
        while True:
            try:
                deliveries = await self.log.next(RELAY_BATCH, RELAY_WAIT)
                self.reading = True
            except NotFound:  # nothing set up yet, or deleted since (then made again)
                if self.reading:
                    log.warning("dead_letter_advisory_stream_missing", stream=self.log.stream)
                    with contextlib.suppress(GatewayError):
                        await self.log.ensure()
                await asyncio.sleep(IDLE_WAIT)
                continue
            except GatewayError as exc:
                log.info("dead_letter_relay_waiting", error=exc.message)
                await asyncio.sleep(IDLE_WAIT)
                continue
            for delivery in deliveries:
                await self._handle(delivery)

    async def _handle(self, delivery: JetStreamDelivery) -> None:
        advisory = parse_advisory(delivery.data)
        try:
            if advisory is None:
                outcome = "ignored"
            else:
                outcome = await self.relay(advisory)
            await self.log.done(delivery)
            self._counted(outcome)
        except CopyFailed as exc:
            await self._again(delivery, str(exc))
        except GatewayError as exc:
            await self._again(delivery, exc.message)
        except Exception as exc:  # a bug must not end the relay: counted as an attempt
            log.exception("dead_letter_relay_error")
            await self._again(delivery, type(exc).__name__)

    async def _again(self, delivery: JetStreamDelivery, why: str) -> None:
        attempts = delivery.num_delivered
        with contextlib.suppress(GatewayError):  # not acked: NATS redelivers it after ack_wait
            if attempts >= self.settings.dead_letter_attempts:
                log.warning("dead_letter_gave_up", attempts=attempts, error=why)
                await self.log.give_up(delivery)
                self._counted("gave_up")
                return
            delay = min(FIRST_RETRY * 2 ** (attempts - 1), self.settings.dead_letter_retry_max)
            log.warning("dead_letter_retry", attempts=attempts, retry_in=delay, error=why)
            await self.log.retry(delivery, delay)
            self._counted("retried")

    async def relay(self, advisory: Advisory) -> str:
        """Deal with one advisory; its outcome (raises CopyFailed / GatewayError to retry)."""
        return await self.copier.copy(advisory)


#: How long the TERM path trusts a consumer's dead-letter setting before reading it again.
TARGET_TTL = 2.0


class DeadLetterCopier:
    """Copies one given-up message into its consumer's dead-letter stream (no task, no queue:
    the relay uses it for advisories, the ack handlers before they send a TERM)."""

    def __init__(self, js: JetStreamAdapter, root: str) -> None:
        self.js = js
        self.root = root
        self._targets: dict[tuple[str, str], tuple[str, float]] = {}

    async def _target(self, stream: str, consumer: str, cached: bool) -> str:
        """The consumer's dead-letter stream, in the tenant's terms ("": none)."""
        key = (stream, consumer)
        now = time.monotonic()
        hit = self._targets.get(key)
        if cached and hit is not None and now - hit[1] <= TARGET_TTL:
            return hit[0]
        target = (await self.js.consumer_info(stream, consumer)).spec.dead_letter
        if len(self._targets) > 10_000:
            self._targets.clear()
        self._targets[key] = (target, now)
        return target

    async def copy(self, advisory: Advisory, *, cached: bool = False) -> str:
        """Copy the message ``advisory`` names into its consumer's dead-letter stream; the
        outcome (raises CopyFailed / GatewayError when it should be tried again). ``cached``:
        the consumer's dead-letter setting may be up to TARGET_TTL old (the TERM path)."""
        ns = namespace_of_stream(advisory.stream, self.root)
        if ns is None:
            return "ignored"  # not a tenant's stream (KV, Object, another application)
        stream_view = ns.from_name(advisory.stream) or ""
        try:
            target_name = await self._target(advisory.stream, advisory.consumer, cached)
        except NotFound:
            log.warning(
                "dead_letter_consumer_gone",
                tenant=tenant_label(ns.tenant),
                stream=stream_view,
                consumer=advisory.consumer,
                sequence=advisory.stream_seq,
            )
            return "ignored"
        if not target_name:
            return "ignored"
        try:
            target = ns.stream(target_name, "dead_letter_stream")  # the SAME tenant, always
        except GatewayError:
            log.warning(
                "dead_letter_target_invalid", tenant=tenant_label(ns.tenant), stream=stream_view
            )
            return "ignored"
        if namespace_of_stream(target, ns.root) != ns or target == advisory.stream:
            log.warning(
                "dead_letter_target_refused", tenant=tenant_label(ns.tenant), stream=stream_view
            )
            return "ignored"
        message = await self.js.get_message(
            advisory.stream, seq=advisory.stream_seq, what="dead-letter source message"
        )
        if message is None:
            (log.warning if advisory.cause == MAX_DELIVERIES else log.info)(
                "dead_letter_source_gone",
                tenant=tenant_label(ns.tenant),
                stream=stream_view,
                consumer=advisory.consumer,
                sequence=advisory.stream_seq,
                cause=advisory.cause,
            )
            return "source_gone"
        try:
            details = await self.js.stream_info(target, what="dead-letter stream")
        except NotFound:
            raise CopyFailed(f"dead-letter stream {target_name!r} does not exist") from None
        subject = copy_subject(ns, details.spec.subjects, message.subject)
        if subject is None:
            raise CopyFailed(f"dead-letter stream {target_name!r} has no usable first subject")
        headers: Mapping[str, str] = {
            **copy_headers(ns, advisory, message, stream_view),
            "Nats-Msg-Id": copy_id(stream_view, advisory),
        }
        ack = await self.js.publish(subject, message.data, stream=target, headers=headers)
        log.info(
            "dead_letter_copied",
            tenant=tenant_label(ns.tenant),
            stream=stream_view,
            consumer=advisory.consumer,
            sequence=advisory.stream_seq,
            cause=advisory.cause,
            copy_sequence=ack.sequence,
            duplicate=ack.duplicate,
        )
        return "copied"
