"""Request/reply between gateway clients, with native NATS responders, and its failure modes."""

from __future__ import annotations

import asyncio
import datetime
import time

import nats
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from nats.aio.msg import Msg

from natsgw._generated.isa import nats as pb
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import GatewayFactory, settled, tenant
from tests.integration.test_messaging import open_subscription


async def test_request_answered_by_another_gateway_client(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    async with open_subscription(stub, pb.SubscribeRequest(user_id=user, subject="svc.echo")) as s:

        async def responder() -> None:
            incoming = await s.recv_message()
            assert incoming.reply_to.startswith("_INBOX.")
            await stub.publish(
                pb.PublishRequest(
                    user_id=user, subject=incoming.reply_to, data=b"echo:" + incoming.data
                )
            )

        task = asyncio.create_task(responder())
        response = await stub.request(
            pb.RequestRequest(
                user_id=user,
                subject="svc.echo",
                data=b"ping",
                timeout=datetime.timedelta(seconds=5),
            )
        )
        await task
    assert response.success
    assert response.data == b"echo:ping"


async def test_request_answered_by_a_native_nats_responder(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()

    async def respond(msg: Msg) -> None:
        await msg.respond(b"native:" + msg.data)

    await nc.subscribe(Namespace(Tenant.user(user)).subject("svc.native"), cb=respond)
    await settled(nc)
    response = await stub.request(
        pb.RequestRequest(user_id=user, subject="svc.native", data=b"hi", headers={"Trace": "t1"})
    )
    assert (response.success, response.data) == (True, b"native:hi")


async def test_another_tenant_cannot_answer_or_see_the_request(stub: pb.NatsServiceStub) -> None:
    alice, mallory = tenant("alice"), tenant("mallory")
    async with open_subscription(stub, pb.SubscribeRequest(user_id=mallory, subject=">")) as spy:
        with pytest.raises(GRPCError) as info:
            await stub.request(
                pb.RequestRequest(
                    user_id=alice,
                    subject="svc.private",
                    timeout=datetime.timedelta(seconds=0.5),
                )
            )
        assert info.value.status is Status.UNAVAILABLE
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(spy.recv_message(), 0.3)


async def test_no_responder_is_unavailable_and_says_so(stub: pb.NatsServiceStub) -> None:
    with pytest.raises(GRPCError) as info:
        await stub.request(pb.RequestRequest(user_id=tenant(), subject="nobody.home"))
    assert info.value.status is Status.UNAVAILABLE
    assert "no responder" in (info.value.message or "")


async def test_silent_responder_times_out_with_deadline_exceeded(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await nc.subscribe(Namespace(Tenant.user(user)).subject("svc.slow"))  # never answers
    await settled(nc)
    started = time.monotonic()
    with pytest.raises(GRPCError) as info:
        await stub.request(
            pb.RequestRequest(
                user_id=user, subject="svc.slow", timeout=datetime.timedelta(milliseconds=300)
            )
        )
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert "0.3s" in (info.value.message or "")
    assert 0.25 < time.monotonic() - started < 3


async def test_default_timeout_applies_when_none_is_given(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    from grpclib.client import Channel

    gw = await make_gateway(request_timeout=0.2)
    user = tenant()
    await nc.subscribe(Namespace(Tenant.user(user)).subject("svc.slow"))
    await settled(nc)
    channel = Channel("127.0.0.1", gw.port)
    try:
        with pytest.raises(GRPCError) as info:
            await pb.NatsServiceStub(channel).request(
                pb.RequestRequest(user_id=user, subject="svc.slow")
            )
    finally:
        channel.close()
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert "0.2s" in (info.value.message or "")


@pytest.mark.parametrize("seconds", [-1, 301])
async def test_out_of_range_timeouts_are_invalid(stub: pb.NatsServiceStub, seconds: int) -> None:
    with pytest.raises(GRPCError) as info:
        await stub.request(
            pb.RequestRequest(
                user_id=tenant(), subject="x", timeout=datetime.timedelta(seconds=seconds)
            )
        )
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "timeout" in (info.value.message or "")
