"""The adapter's one request inbox (natsgw.adapter.replies.Requester) against a real nats-server:
Client.request's outcomes, and no request outlives its call in the waiting table."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
import pytest
from nats import errors as nats_errors
from nats.aio.msg import Msg

from natsgw.adapter import NatsAdapter
from natsgw.adapter.errors import translated
from natsgw.adapter.jetstream import JetStreamAdapter
from natsgw.adapter.replies import Requester
from natsgw.errors import DeadlineExceeded, Unavailable
from natsgw.ops.embedded import EmbeddedNatsServer
from tests.conftest import NatsFactory, settled, wait_for


def subject() -> str:
    return f"req-{uuid.uuid4().hex[:10]}"


async def silent(nc: nats.NATS, name: str, heard: list[Msg] | None = None) -> None:
    """A subscriber that never answers: the request is heard (no 503), then times out."""

    async def hear(msg: Msg) -> None:
        if heard is not None:
            heard.append(msg)

    await nc.subscribe(name, cb=hear)
    await settled(nc)


async def test_the_reply_comes_back_with_its_headers_and_the_request_is_forgotten(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    name = subject()

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data.upper() + (msg.headers or {}).get("X-Tag", "").encode())

    await nc.subscribe(name, cb=echo)
    await settled(nc)
    requester = adapter.requester()
    assert (await requester.request(name, b"abc", 5)).data == b"ABC"
    assert (await requester.request(name, b"abc", 5, {"X-Tag": "!"})).data == b"ABC!"
    assert requester.waiting == 0


async def test_concurrent_requests_each_get_their_own_reply(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    name = subject()
    heard: list[Msg] = []
    await silent(nc, name, heard)
    requester = adapter.requester()
    calls = asyncio.gather(*(requester.request(name, b"%d" % i, 5) for i in range(30)))
    await wait_for(lambda: len(heard) == 30)
    assert requester.waiting == 30
    for msg in reversed(heard):  # answered in the opposite order
        await msg.respond(b"re " + msg.data)
    replies = await calls
    assert [msg.data for msg in replies] == [b"re %d" % i for i in range(30)]
    assert requester.waiting == 0


async def test_timeout_raises_nats_timeout_and_forgets_the_request(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    name = subject()
    await silent(nc, name)
    requester = adapter.requester()
    with pytest.raises(nats_errors.TimeoutError):
        await requester.request(name, b"", 0.2)
    assert requester.waiting == 0
    # What translated() makes of it, as for Client.request's timeout: DEADLINE_EXCEEDED.
    with pytest.raises(DeadlineExceeded), translated("probe"):
        await requester.request(name, b"", 0.2)
    assert requester.waiting == 0


async def test_a_direct_get_nobody_answers_is_deadline_exceeded(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    """The KV/Object read path: a direct get heard but never answered times out as before."""
    stream = subject().upper()
    await silent(nc, f"$JS.API.DIRECT.GET.{stream}.>")
    with pytest.raises(DeadlineExceeded, match="did not answer in time"):
        await JetStreamAdapter(adapter).get_message(
            stream, subject="some.key", what="read", timeout=0.3
        )
    assert adapter.requester().waiting == 0


async def test_cancellation_forgets_the_request(adapter: NatsAdapter, nc: nats.NATS) -> None:
    name = subject()
    heard: list[Msg] = []
    await silent(nc, name, heard)
    requester = adapter.requester()
    call = asyncio.create_task(requester.request(name, b"", 30))
    await wait_for(lambda: bool(heard))
    assert requester.waiting == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert requester.waiting == 0


async def test_no_responders_raises_nats_no_responders_and_forgets_the_request(
    adapter: NatsAdapter,
) -> None:
    requester = adapter.requester()
    with pytest.raises(nats_errors.NoRespondersError):
        await requester.request(subject(), b"", 5)
    assert requester.waiting == 0
    with pytest.raises(Unavailable, match="no responder"), translated("probe"):
        await requester.request(subject(), b"", 5)


async def test_an_answer_after_the_timeout_is_ignored(adapter: NatsAdapter, nc: nats.NATS) -> None:
    name = subject()
    heard: list[Msg] = []
    await silent(nc, name, heard)
    requester = adapter.requester()
    with pytest.raises(nats_errors.TimeoutError):
        await requester.request(name, b"first", 0.2)
    assert [msg.data for msg in heard] == [b"first"]

    answering = subject()

    async def answer(msg: Msg) -> None:
        await heard[0].respond(b"late answer to first")  # first the late one, then this one
        await msg.respond(b"answer to " + msg.data)

    await nc.subscribe(answering, cb=answer)
    await settled(nc)
    assert (await requester.request(answering, b"second", 5)).data == b"answer to second"
    await nc.flush()
    assert requester.waiting == 0


async def test_bad_subject_and_closed_connection_raise_as_publish_does_and_forget(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await nats.connect(nats_server.url)
    requester = Requester(client)
    await requester.open()
    with pytest.raises(nats_errors.BadSubjectError):
        await requester.request("bad subject", b"", 5)
    with pytest.raises(nats_errors.MaxPayloadError):
        await requester.request(subject(), b"x" * (client.max_payload + 1), 5)
    await client.close()
    with pytest.raises(nats_errors.ConnectionClosedError):
        await requester.request(subject(), b"", 5)
    assert requester.waiting == 0


async def test_the_inbox_is_resubscribed_after_a_reconnect(make_nats: NatsFactory) -> None:
    server = await make_nats()
    core = NatsAdapter([server.url])
    await core.start(wait=5)
    try:
        account = await core.jetstream_account(timeout=5)  # a JetStream API request
        assert account.streams >= 0
        await server.stop()
        await wait_for(lambda: not core.connected)
        with pytest.raises(Unavailable):
            core.requester()
        await server.start()  # same port
        await wait_for(lambda: core.connected, timeout=20)
        # Answered on the same inbox as before the outage: nats-py resubscribed it. (JetStream
        # may need a moment after a restart: retry until it answers.)
        for _ in range(50):
            with contextlib.suppress(DeadlineExceeded, Unavailable):
                await core.jetstream_account(timeout=0.5)
                break
        else:
            raise AssertionError("JetStream never answered after the reconnect")
        assert core.requester().waiting == 0
    finally:
        await core.close()


async def test_a_request_inbox_that_fails_to_open_is_retried_on_a_new_connection(
    nats_server: EmbeddedNatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: a failed ``Requester.open()`` used to end the connect task for good (the gateway
    stayed UNAVAILABLE); now that connection is closed and the next one opens its inbox."""
    opened = Requester.open
    failures: list[Requester] = []

    async def open_once_failing(self: Requester) -> None:
        if not failures:
            failures.append(self)
            raise Unavailable("request inbox: the connection closed under us")
        await opened(self)

    monkeypatch.setattr(Requester, "open", open_once_failing)
    core = NatsAdapter([nats_server.url])
    try:
        await core.start(wait=10)
        await wait_for(lambda: core.state().status == "CONNECTED", 10)
        assert failures
        reply = await core.requester().request("$JS.API.INFO", b"", timeout=5)
        assert b"io.nats.jetstream.api.v1.account_info_response" in reply.data
    finally:
        await core.close()
