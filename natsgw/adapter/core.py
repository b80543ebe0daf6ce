"""Connection to NATS and core messaging: publish with confirmation, subscribe, request.

Thin on purpose: it takes NATS names (already mapped by natsgw.tenancy) and plain values, calls
nats-py, and translates what goes wrong. It knows nothing of tenants or of the wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import nats
import structlog
from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import NoRespondersError, SlowConsumerError

from natsgw.adapter.errors import ApiError, as_gateway_error, translated
from natsgw.adapter.flow import Inflow, SizeHints
from natsgw.adapter.replies import Requester, no_responders
from natsgw.adapter.types import ConnectionState, JetStreamAccount, Message, ServerFacts
from natsgw.backoff import Backoff
from natsgw.compat import nats as nats_compat
from natsgw.errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

log = structlog.get_logger("natsgw.adapter")

#: Retry delays towards NATS: reconnects, consumer re-creation, Consume pulls.
NATS_BACKOFF = Backoff(base=0.25, cap=10.0)
#: Bytes nats-py reads from its socket per turn of the event loop (natsgw.compat.nats).
READ_SIZE = 1024 * 1024
#: Default of NATSGW_NATS_READ_WINDOW_BYTES: reply bytes in transit (natsgw.adapter.flow).
READ_WINDOW = 32 * 1024 * 1024
#: Default of NATSGW_OBJECT_READ_WINDOW_BYTES.
OBJECT_READ_WINDOW = 4 * 1024 * 1024
#: A replaced connection that lived this long starts its next replacement's backoff afresh.
_STABLE_AFTER = 30.0


def backoff_delay(attempt: int) -> float:
    """The NATS retry delay for ``attempt`` (0 is the first retry); see natsgw.backoff."""
    return NATS_BACKOFF.delay(attempt)


def _reconnect_handler(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
    # Choose the server that failed least, wait according to how often it failed.
    server = min(servers, key=lambda s: s.reconnects)
    return server, backoff_delay(server.reconnects)


async def _settle(client: NatsClient, timeout: float) -> None:
    """Return once the server has processed everything sent on this connection so far.

    nats-py writes its PING straight to the socket, ahead of commands still queued for its
    flusher, so a plain ``flush()`` can be answered before a queued PUB or SUB was even sent.
    Forcing the queue out first puts the PING behind them (see natsgw.compat.nats).
    """
    await nats_compat.flush_pending(client)
    await client.flush(timeout=timeout)  # type: ignore[arg-type]


#: One message of :meth:`NatsAdapter.publish_many`: position, subject, data, headers, reply.
Outgoing = tuple[int, str, bytes, Mapping[str, str], str]


def header_bytes(headers: Mapping[str, str] | None) -> int:
    """Size of the header block as nats clients write it, and NATS counts it against limits.

    ``NATS/1.0\r\n`` (10 bytes), ``key: value\r\n`` per header, a closing ``\r\n``; no headers,
    no block. Used for max_payload checks and for a delivery's size against a pull's max_bytes.
    """
    if not headers:
        return 0
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def check_headers(headers: Mapping[str, str], field: str = "headers") -> None:
    """Header names/values that would corrupt the NATS protocol are refused up front."""
    for key, value in headers.items():
        if not key or any(c in key for c in ":\r\n ") or not key.isprintable():
            raise InvalidArgument(
                field, f"header name {key!r} must be non-empty printable text without ':' or spaces"
            )
        if "\r" in value or "\n" in value:
            raise InvalidArgument(field, f"header {key!r} has a line break in its value")


class Subscription:
    """A live core-NATS subscription; ``unsubscribe`` is idempotent.

    It outlives the delivery connection it was made on: when that connection is replaced
    (closed by the server), the adapter subscribes it again on the new one (:meth:`moved`).
    """

    def __init__(
        self,
        sub: NatsSubscription,
        release: Callable[[Subscription], None],
        *,
        queue: str = "",
        cb: Callable[[Msg], Any] | None = None,
        limits: tuple[int, int] = (0, 0),
    ) -> None:
        self._sub = sub
        self._release = release
        self._closed = False
        self.subject = sub.subject
        self.queue = queue
        self.cb = cb
        self.limits = limits

    @property
    def nats_sub(self) -> NatsSubscription:
        return self._sub

    def moved(self, sub: NatsSubscription) -> None:
        """Now delivered through ``sub`` (on a replacement connection)."""
        self._sub = sub

    async def unsubscribe(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release(self)
        try:
            await self._sub.unsubscribe()
        except Exception as exc:  # closed connection: the server already forgot it
            log.debug("unsubscribe_ignored", error=type(exc).__name__)


def _settle_batch(batch: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for future in batch:
        if not future.done():
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)


class _Confirmer:
    """Coalesces publish confirmations: one PING/PONG covers every publish written before it.

    A core NATS publish is fire-and-forget; the PONG after a PING proves the server has read
    everything sent before the PING, so a client is never told "published" for bytes still sitting
    in a local buffer.

    Pipelined: each batch's PUBs are written, then its PING, and the next batch does not wait for
    the previous PONG (PONGs come back in PING order). Waiting for each PONG before the next
    PING made every publish wait up to two round trips to nats-server, and left the gateway idle
    meanwhile under concurrent unary publishes.
    """

    def __init__(self, client: NatsClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        #: What callers waiting at :meth:`close` are told.
        self.closing_reason = "the gateway is shutting down"
        self._waiting: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._pongs: set[asyncio.Task[None]] = set()
        self._task = asyncio.create_task(self._run(), name="natsgw-publish-confirmer")

    async def confirm(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._wake.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            try:
                with translated("publish confirmation"):
                    # The batch's PUBs reach the socket before its PING (see _settle).
                    await nats_compat.flush_pending(self._client)
            except Exception as exc:
                _settle_batch(batch, exc)
                continue
            pong = asyncio.create_task(self._pong(), name="natsgw-publish-pong")
            self._pongs.add(pong)
            pong.add_done_callback(functools.partial(self._pong_arrived, batch))

    async def _pong(self) -> None:
        with translated("publish confirmation"):
            await self._client.flush(timeout=self._timeout)  # type: ignore[arg-type]

    def _pong_arrived(self, batch: list[asyncio.Future[None]], pong: asyncio.Task[None]) -> None:
        self._pongs.discard(pong)
        if pong.cancelled():
            _settle_batch(batch, Unavailable(self.closing_reason))
        else:
            _settle_batch(batch, pong.exception())

    async def close(self) -> None:
        self._task.cancel()
        for pong in list(self._pongs):
            pong.cancel()
        await asyncio.gather(self._task, *self._pongs, return_exceptions=True)
        for future in self._waiting:
            if not future.done():
                future.set_exception(Unavailable(self.closing_reason))


async def _close_quietly(nc: NatsClient) -> None:
    """Close ``nc`` at shutdown whatever state its socket is in.

    nats-py's ``close`` flushes its transport first and raises when the server already dropped
    the connection (a reconnecting client, a killed embedded server): at shutdown that is not
    news, and raising would abort the rest of the shutdown order.
    """
    try:
        await nc.close()
    except Exception as exc:
        log.info("nats_close_ignored", error=type(exc).__name__)


class NatsAdapter:
    """Two NATS connections, each kept up for as long as the gateway runs.

    The main one carries publishes, requests, JetStream and everything else; a second one
    carries only the deliveries of core subscriptions (:meth:`subscribe`). However much a tenant
    subscribes to, what nats-server queues towards the gateway for it cannot get the publishing
    connection declared a slow consumer, and a cut delivery connection reconnects (and
    resubscribes) on its own while publishes go on.

    nats-py reconnects by itself after a lost socket, but a server ``-ERR`` (max payload
    exceeded, authorization violation or expiry, ...) closes its client for good. So a
    supervisor task replaces a closed connection with a new one (with backoff), opening its
    request inbox or subscribing its core subscriptions again; requests in flight on a lost
    connection end at once (UNAVAILABLE) instead of waiting out their deadline. :meth:`outage`
    says for how long a connection has been down, for the liveness probe.
    """

    def __init__(
        self,
        servers: list[str],
        *,
        user: str = "",
        password: str = "",
        token: str = "",
        name: str = "natsgw",
        publish_confirm_timeout: float = 5.0,
        gateway_max_message: int = 0,
        jetstream_domain: str = "",
        read_window_bytes: int = READ_WINDOW,
        object_read_window_bytes: int = OBJECT_READ_WINDOW,
    ) -> None:
        self._servers = servers
        self._options: dict[str, Any] = {"name": name}
        if user:
            self._options["user"] = user
            self._options["password"] = password
        if token:
            self._options["token"] = token
        self._confirm_timeout = publish_confirm_timeout
        self._gateway_max_message = gateway_max_message
        self._jetstream_domain = jetstream_domain or None
        self._nc: NatsClient | None = None
        self._requester: Requester | None = None
        self._deliveries: NatsClient | None = None
        self._confirmer: _Confirmer | None = None
        self._connect_task: asyncio.Task[None] | None = None
        #: Overflow callbacks by nats-py subscription (SlowConsumerError names its ``sub``).
        self._overflow: dict[NatsSubscription, Callable[[], None]] = {}
        #: Live core subscriptions, subscribed again on a replacement delivery connection.
        self._subscriptions: set[Subscription] = set()
        self._reconnects = 0
        #: Closed connections replaced by new ones (server -ERR, auth failures...).
        self.replacements = 0
        self._status = "CONNECTING"
        self._closing = False
        self._lost = asyncio.Event()
        self._up = asyncio.Event()  # both connections opened the first time
        self._down_since: float | None = time.monotonic()
        self._down_reason = "not connected to NATS yet"
        #: Reply bytes in transit on the main connection (natsgw.adapter.flow).
        self.inflow = Inflow(read_window_bytes)
        self.sizes = SizeHints()
        #: Bytes one object read may have in transit (natsgw.adapter.objects).
        self.object_read_window = object_read_window_bytes
        # A busy gateway (many streams writing) must read NATS faster than nats-py's default
        # 32 KiB per turn of the event loop, or nats-server cuts it as a slow consumer.
        nats_compat.set_read_size(READ_SIZE)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, wait: float = 0.0) -> None:
        """Connect in the background; with ``wait``, give the first attempt that long to succeed."""
        self._connect_task = asyncio.create_task(self._supervise(), name="natsgw-connect")
        if wait:
            up = asyncio.create_task(self._up.wait())
            try:
                done, _ = await asyncio.wait(
                    {self._connect_task, up}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                up.cancel()
            if self._connect_task in done:
                self._connect_task.result()

    async def _supervise(self) -> None:
        """Open both connections, then replace whichever nats-py closed for good."""
        await self._open_main()
        await self._open_deliveries()
        self._check_up()
        self._up.set()
        failures = 0
        while True:
            await self._lost.wait()
            self._lost.clear()
            main, deliveries = self._nc, self._deliveries
            if not ((main is not None and main.is_closed) or (deliveries and deliveries.is_closed)):
                continue
            # Backoff between replacements: a server that closes every new connection at once
            # (a bad credential) is not hammered.
            delay = backoff_delay(failures)
            failures += 1
            log.warning(
                "nats_connection_replaced",
                main=bool(main and main.is_closed),
                deliveries=bool(deliveries and deliveries.is_closed),
                reason=self._down_reason,
                retry_in=round(delay, 3),
            )
            await asyncio.sleep(delay)
            opened = time.monotonic()
            if main is not None and main.is_closed:
                await self._open_main()
            if deliveries is not None and deliveries.is_closed:
                await self._open_deliveries()
            self.replacements += 1
            self._check_up()
            if time.monotonic() - opened > _STABLE_AFTER:
                failures = 0

    async def _open_main(self) -> None:
        attempt = 0
        while True:
            nc = await self._connect_until_up(
                name=self._options["name"],
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
            requester = Requester(nc)
            try:
                await requester.open()
                break
            except GatewayError as exc:  # the connection went away at once: start over
                delay = backoff_delay(attempt)
                log.warning("nats_request_inbox_failed", error=str(exc), retry_in=delay)
                attempt += 1
                with contextlib.suppress(Exception):
                    await nc.close()
                await asyncio.sleep(delay)
        old_confirmer = self._confirmer
        self._requester = requester  # before _nc: whoever finds the connection finds its inbox
        self._nc = nc
        self._confirmer = _Confirmer(nc, self._confirm_timeout)
        self._status = "CONNECTED"
        if old_confirmer is not None:
            old_confirmer.closing_reason = "the NATS connection was replaced; publish again"
            await old_confirmer.close()
        log.info(
            "nats_connected",
            url=self._url(),
            server=nats_compat.server_info(nc).get("server_name"),
        )

    async def _open_deliveries(self) -> None:
        nc = await self._connect_until_up(
            name=f"{self._options['name']}:deliveries",
            error_cb=self._on_delivery_error,
            disconnected_cb=self._on_deliveries_disconnected,
            reconnected_cb=self._on_deliveries_reconnected,
            closed_cb=self._on_deliveries_closed,
        )
        self._deliveries = nc
        for subscription in list(self._subscriptions):
            old = subscription.nats_sub
            try:
                with translated("subscribe again"):
                    sub = await nc.subscribe(
                        subscription.subject,
                        queue=subscription.queue,
                        cb=subscription.cb,
                        pending_msgs_limit=subscription.limits[0],
                        pending_bytes_limit=subscription.limits[1],
                    )
            except GatewayError as exc:  # this connection is gone too: the next one retries
                log.warning("nats_resubscribe_failed", error=exc.message)
                return
            callback = self._overflow.pop(old, None)
            if callback is not None:
                self._overflow[sub] = callback
            subscription.moved(sub)

    async def _connect_until_up(self, **callbacks: Any) -> NatsClient:
        attempt = 0
        while True:
            try:
                return await nats.connect(
                    servers=self._servers,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_to_server_handler=_reconnect_handler,
                    connect_timeout=2,
                    **{**self._options, **callbacks},
                )
            except Exception as exc:
                delay = backoff_delay(attempt)
                reason = str(exc) or type(exc).__name__
                self._mark_down(f"cannot connect to NATS: {reason[:200]}")
                log.warning(
                    "nats_connect_failed",
                    connection=callbacks.get("name", ""),
                    error=reason,
                    retry_in=delay,
                )
                attempt += 1
                await asyncio.sleep(delay)

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Drain (deliver what is in flight, then close) and stop reconnecting."""
        self._closing = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            await asyncio.gather(self._connect_task, return_exceptions=True)
        if self._confirmer is not None:
            await self._confirmer.close()
        deliveries, self._deliveries = self._deliveries, None
        if deliveries is not None and not deliveries.is_closed:
            # Streams ended before this (shutdown order): nothing is left to deliver.
            await _close_quietly(deliveries)
        nc, self._nc = self._nc, None
        if nc is None or nc.is_closed:
            return
        self._status = "DRAINING"
        try:
            await asyncio.wait_for(nc.drain(), drain_timeout)
        except Exception as exc:
            log.warning("nats_drain_failed", error=type(exc).__name__)
            await _close_quietly(nc)
        self._status = "CLOSED"

    # -- connection events --------------------------------------------------------------------

    def _mark_down(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._down_reason = reason

    def _check_up(self) -> None:
        deliveries = self._deliveries
        if self.connected and deliveries is not None and deliveries.is_connected:
            self._down_since = None
            self._down_reason = ""

    def _fail_requests(self, why: str) -> None:
        requester = self._requester
        if requester is not None:
            requester.fail_all(lambda: nats_errors.ConnectionClosedError(why))

    def _last_error(self, nc: NatsClient | None) -> str:
        error = nc.last_error if nc is not None else None
        return (str(error) or type(error).__name__)[:200] if error is not None else ""

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            return  # JetStream readers on this connection notice gaps themselves
        log.warning("nats_error", error=str(exc) or type(exc).__name__)

    async def _on_delivery_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            callback = self._overflow.get(exc.sub)
            if callback is not None:
                callback()
            return
        log.warning("nats_error", connection="deliveries", error=str(exc) or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        self._fail_requests("the NATS connection was lost")
        if self._status == "CONNECTED":
            self._status = "RECONNECTING"
            self._mark_down("the NATS connection was lost; reconnecting")
            log.warning("nats_disconnected")

    async def _on_reconnected(self) -> None:
        self._reconnects += 1
        self._status = "CONNECTED"
        self._check_up()
        log.info("nats_reconnected", url=self._url())

    async def _on_closed(self) -> None:
        if self._closing:
            return
        self._status = "CLOSED"
        self._fail_requests("the NATS connection was closed")
        detail = self._last_error(self._nc) or "closed"
        self._mark_down(f"the NATS connection was closed ({detail}); reconnecting")
        log.error("nats_connection_closed", connection="main", error=detail)
        self._lost.set()

    async def _on_deliveries_disconnected(self) -> None:
        if self._closing:
            return  # our own close(), not news
        self._mark_down("the NATS delivery connection was lost; reconnecting")
        log.warning("nats_disconnected", connection="deliveries")

    async def _on_deliveries_reconnected(self) -> None:
        self._check_up()
        log.info("nats_reconnected", connection="deliveries")

    async def _on_deliveries_closed(self) -> None:
        if self._closing:
            return
        detail = self._last_error(self._deliveries) or "closed"
        self._mark_down(f"the NATS delivery connection was closed ({detail}); reconnecting")
        log.error("nats_connection_closed", connection="deliveries", error=detail)
        self._lost.set()

    def outage(self) -> tuple[float, str]:
        """Seconds some NATS connection has been down, and why; ``(0.0, "")`` while all are up."""
        self._check_up()
        since = self._down_since
        if since is None:
            return 0.0, ""
        return time.monotonic() - since, self._down_reason or "NATS is not connected"

    # -- state ------------------------------------------------------------------------------------

    def _url(self) -> str:
        url = self._nc.connected_url if self._nc is not None else None
        return f"{url.scheme}://{url.hostname}:{url.port}" if url else ""

    def state(self) -> ConnectionState:
        status = self._status
        if self._nc is not None and self._nc.is_connected:
            status = "CONNECTED"
        return ConnectionState(
            status=status, connected_url=self._url(), reconnects=self._reconnects
        )

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def facts(self) -> ServerFacts:
        info = nats_compat.server_info(self.client())
        return ServerFacts(
            server_id=str(info.get("server_id", "")),
            server_name=str(info.get("server_name", "")),
            version=str(info.get("version", "")),
            max_payload=int(info.get("max_payload", 0)),
            jetstream=bool(info.get("jetstream", False)),
            headers=bool(info.get("headers", False)),
        )

    async def rtt(self, timeout: float) -> float:
        """A full round trip to the server, in seconds."""
        with translated("round trip to NATS"):
            return float(await self.client().rtt(timeout=timeout))  # type: ignore[arg-type]

    def client(self) -> NatsClient:
        """The live connection, for the modules of this package only; Unavailable when down."""
        nc = self._nc
        if nc is None:
            raise Unavailable("not connected to NATS yet; the gateway keeps retrying")
        if not nc.is_connected:
            raise Unavailable(
                f"the NATS connection is {self.state().status.lower()}; retry shortly"
            )
        return nc

    def requester(self) -> Requester:
        """The live connection's request inbox, for the modules of this package only;
        Unavailable when down (as :meth:`client`)."""
        self.client()
        requester = self._requester
        if requester is None:  # unreachable: set before the connection is
            raise Unavailable("not connected to NATS yet; the gateway keeps retrying")
        return requester

    async def jetstream_account(self, timeout: float) -> JetStreamAccount:
        """Proves JetStream answers (used by deep health checks): ``$JS.API.INFO``."""
        what = "JetStream account info"
        with translated(what):
            try:
                msg = await self.requester().request(f"{self.api_prefix}.INFO", b"", timeout)
            except NoRespondersError:
                raise Unavailable(f"{what}: JetStream is not enabled or not answering") from None
            try:
                info = json.loads(msg.data)
            except ValueError:
                raise Unavailable(f"{what}: JetStream answered without a JSON body") from None
            if "error" in info:
                raise ApiError.of(info["error"])
        return JetStreamAccount(
            streams=int(info.get("streams", 0)),
            consumers=int(info.get("consumers", 0)),
            memory=int(info.get("memory", 0)),
            storage=int(info.get("storage", 0)),
        )

    @property
    def api_prefix(self) -> str:
        """Subject prefix of the JetStream API (of the configured domain, if any)."""
        domain = self._jetstream_domain
        return f"$JS.{domain}.API" if domain else "$JS.API"

    # -- core messaging ---------------------------------------------------------------------------

    def check_payload(self, data: bytes, headers: Mapping[str, str]) -> None:
        """Refuse what NATS would refuse, before anything is sent: never half-send."""
        check_headers(headers)
        limit = self.client().max_payload
        size = len(data) + header_bytes(headers)
        if size > limit:
            raise ResourceExhausted(
                f"message is {size} bytes (data plus headers); the NATS server's max_payload is "
                f"{limit} bytes and the gateway's max message size is {self._gateway_max_message}"
                " bytes"
            )

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        reply: str = "",
        confirm: bool = True,
    ) -> None:
        """Publish; with ``confirm`` return only once the server has read it."""
        nc = self.client()
        if headers or len(data) > nc.max_payload:  # else nothing to refuse (as publish_many)
            self.check_payload(data, headers or {})
        with translated("publish"):
            await nc.publish(subject, data, reply=reply, headers=dict(headers) if headers else None)
        if confirm:
            await self.confirm()

    async def publish_many(
        self, messages: Iterable[Outgoing], *, yield_every: int = 256
    ) -> list[tuple[int, GatewayError]]:
        """Publish ``(position, subject, data, headers, reply)`` items in order, unconfirmed.

        What NATS would refuse is not sent; its position and error come back. Messages without
        headers are queued on the connection ``yield_every`` at a time as ready-made commands
        (natsgw.compat.nats.PubCommands: nats-py's per-message ``publish`` was most of a
        batch's cost); one with headers goes through ``publish`` after those before it. The loop
        lets other calls run after each slice.
        """
        nc = self.client()
        limit = nc.max_payload
        commands = nats_compat.PubCommands(nc)
        add = commands.add
        positions: list[int] = []  # of the messages queued in ``commands``
        failed: list[tuple[int, GatewayError]] = []

        async def send() -> None:
            try:
                await commands.send()
            except Exception as exc:  # nothing of the slice was queued
                error = as_gateway_error("publish", exc)
                failed.extend((position, error) for position in positions)
            positions.clear()

        for position, subject, data, headers, reply in messages:
            try:
                if not headers and len(data) <= limit:
                    add(subject, reply, data)
                    positions.append(position)
                    if len(positions) >= yield_every:
                        await send()
                        await asyncio.sleep(0)
                    continue
                self.check_payload(data, headers)
                await send()  # keeps the order: what came before goes first
                await nc.publish(subject, data, reply=reply, headers=dict(headers))
            except GatewayError as exc:
                failed.append((position, exc))
            except Exception as exc:
                failed.append((position, as_gateway_error("publish", exc)))
        await send()
        failed.sort(key=lambda pair: pair[0])
        return failed

    async def confirm(self) -> None:
        """Wait until the server has read everything published on this connection so far."""
        confirmer = self._confirmer
        if confirmer is None:
            raise Unavailable("not connected to NATS yet; the gateway keeps retrying")
        await confirmer.confirm()

    async def subscribe(
        self,
        subject: str,
        on_message: Callable[[Message], None],
        *,
        queue: str = "",
        on_overflow: Callable[[], None],
        pending_msgs: int,
        pending_bytes: int,
    ) -> Subscription:
        """Subscribe on the delivery connection; ``on_message`` must not block (it runs on
        nats-py's delivery task)."""
        self.client()  # the same "not connected" answers as every other call
        nc = self._deliveries
        if nc is None or not nc.is_connected:
            raise Unavailable("the NATS delivery connection is not up yet; retry shortly")

        async def deliver(msg: Msg) -> None:
            on_message(
                Message(
                    subject=msg.subject, data=msg.data, headers=msg.headers or {}, reply=msg.reply
                )
            )

        with translated("subscribe"):
            sub = await nc.subscribe(
                subject,
                queue=queue,
                cb=deliver,
                pending_msgs_limit=pending_msgs,
                pending_bytes_limit=pending_bytes,
            )
            try:
                # Callers announce the subscription as live: make sure the server has it.
                await _settle(nc, self._confirm_timeout)
            except BaseException:
                await Subscription(sub, lambda _s: None).unsubscribe()
                raise
        self._overflow[sub] = on_overflow
        subscription = Subscription(
            sub, self._release, queue=queue, cb=deliver, limits=(pending_msgs, pending_bytes)
        )
        self._subscriptions.add(subscription)
        return subscription

    def _release(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        self._overflow.pop(subscription.nats_sub, None)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        inbox: str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """Request/reply through a caller-chosen inbox, so replies stay inside a namespace."""
        nc = self.client()
        self.check_payload(data, headers or {})
        reply: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        with translated("request"):
            sub = await nc.subscribe(inbox, future=reply, max_msgs=1)
            try:
                await nc.publish(
                    subject, data, reply=inbox, headers=dict(headers) if headers else None
                )
                msg = await asyncio.wait_for(reply, timeout)
            except TimeoutError:
                raise DeadlineExceeded(f"no reply within {timeout:g}s") from None
            finally:
                try:
                    await sub.unsubscribe()
                except Exception as exc:
                    log.debug("request_unsubscribe_ignored", error=type(exc).__name__)
        if no_responders(msg):
            raise Unavailable("no responder is subscribed to that subject")
        return Message(
            subject=msg.subject, data=msg.data, headers=msg.headers or {}, reply=msg.reply
        )
