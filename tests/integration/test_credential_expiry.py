"""A long-lived call (Subscribe, KVWatch, …) ends with UNAUTHENTICATED when its credential stops
being valid: a JWT at its expiry (plus NATSGW_JWT_LEEWAY), a token once it is removed from the
tokens file (within NATSGW_AUTH_RECHECK_INTERVAL)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError
from h2.exceptions import StreamClosedError

from natsgw._generated.isa import nats as pb
from natsgw.config import AuthMode
from tests.conftest import GatewayFactory, tenant, wait_for
from tests.integration._security import public_pem, rsa_key

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def _open(
    channel: Channel, method: str, request: Any, reply: type, token: str
) -> AsyncIterator[Any]:
    stream: Any
    async with channel.request(
        f"/isa.nats.NATSService/{method}",
        Cardinality.UNARY_STREAM,
        type(request),
        reply,
        metadata={"authorization": f"Bearer {token}"},
    ) as stream:
        await stream.send_message(request, end=True)
        await stream.recv_initial_metadata()
        try:
            yield stream
        finally:
            with contextlib.suppress(ProtocolError, StreamClosedError):  # already over
                await stream.cancel()  # a client hanging up


async def _ended_unauthenticated(stream: Any, within: float) -> str:
    """Read until the stream ends; it must end UNAUTHENTICATED within ``within`` seconds."""
    with pytest.raises(GRPCError) as info:
        async with asyncio.timeout(within):
            while await stream.recv_message() is not None:
                pass
            await stream.recv_trailing_metadata()
    assert info.value.status is Status.UNAUTHENTICATED, info.value
    return info.value.message or ""


@pytest.mark.parametrize("method", ["Subscribe", "KVWatch", "Consume"])
async def test_stream_ends_when_its_jwt_expires(
    make_gateway: GatewayFactory, tmp_path: Path, method: str
) -> None:
    key = rsa_key()
    path = tmp_path / "jwt.pub.pem"
    path.write_bytes(public_pem(key))
    gw = await make_gateway(
        auth_mode=AuthMode.JWT,
        jwt_key_file=path,
        jwt_algorithms=("RS256",),
        jwt_audience="natsgw-test",
        jwt_leeway=0.0,
    )
    user = tenant()
    expires = time.time() + 2.0
    token = jwt.encode({"sub": user, "aud": "natsgw-test", "exp": expires}, key, "RS256")
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    meta = {"authorization": f"Bearer {token}"}
    try:
        if method == "Subscribe":
            request: Any = pb.SubscribeRequest(subject="feed")
            reply: type = pb.MessageResponse
        elif method == "KVWatch":
            await stub.kv_put(pb.KvPutRequest(bucket="b", key="k", value=b"1"), metadata=meta)
            request, reply = pb.KvWatchRequest(bucket="b", key="k"), pb.KvEntry
        else:
            config = pb.StreamConfig(name="jobs", subjects=["jobs.>"])
            await stub.create_stream(pb.CreateStreamRequest(config=config), metadata=meta)
            consumer = pb.ConsumerConfig(durable_name="w")
            await stub.create_consumer(
                pb.CreateConsumerRequest(stream_name="jobs", config=consumer), metadata=meta
            )
            request = pb.ConsumeRequest(stream_name="jobs", consumer_name="w")
            reply = pb.ConsumeResponse
        async with _open(channel, method, request, reply, token) as stream:
            if method == "Subscribe":
                await stub.publish(pb.PublishRequest(subject="feed", data=b"1"), metadata=meta)
            elif method == "Consume":
                await stub.publish_to_stream(
                    pb.PublishToStreamRequest(stream_name="jobs", subject="jobs.a", data=b"1"),
                    metadata=meta,
                )
            assert await stream.recv_message() is not None  # the stream works while valid
            message = await _ended_unauthenticated(stream, within=10)
        late = time.time() - expires
        print(f"\n{method}: ended {late:+.2f}s after the JWT's exp")
        assert "expired" in message
        assert -0.1 < late < 1.5
        await wait_for(lambda: gw.subscriptions.active == 0)  # what it held is released
    finally:
        channel.close()
        # Finalize the ended calls' leftovers now rather than during a later import: on CPython
        # 3.11.7 a finalizer running in the middle of pytest's assertion rewriting made it fail
        # with "SystemError: AST constructor recursion depth mismatch" at session end.
        gc.collect()


async def test_stream_ends_when_its_token_is_removed(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    user = tenant()
    keep, revoke = "keep-" + "k" * 30, "revoke-" + "r" * 30
    path = tmp_path / "tokens.json"
    entries = [{"token": keep, "user_id": user}, {"token": revoke, "user_id": user}]
    path.write_text(json.dumps({"tokens": entries}))
    gw = await make_gateway(
        auth_mode=AuthMode.TOKEN, auth_tokens_file=path, auth_recheck_interval=0.5
    )
    channel = Channel("127.0.0.1", gw.port)
    try:
        request = pb.SubscribeRequest(subject="feed")
        async with (
            _open(channel, "Subscribe", request, pb.MessageResponse, revoke) as doomed,
            _open(channel, "Subscribe", request, pb.MessageResponse, keep) as kept,
        ):
            await asyncio.sleep(1.0)  # several rechecks pass while the token is valid
            path.write_text(json.dumps({"tokens": entries[:1]}))
            revoked_at = time.monotonic()
            message = await _ended_unauthenticated(doomed, within=5)
            print(
                f"\nSubscribe: ended {time.monotonic() - revoked_at:.2f}s after the token file edit"
            )
            assert time.monotonic() - revoked_at < 1.5
            assert "invalid API token" in message
            # The other stream, whose token stays, carries on.
            stub = pb.NatsServiceStub(channel)
            meta = {"authorization": f"Bearer {keep}"}
            await stub.publish(pb.PublishRequest(subject="feed", data=b"still"), metadata=meta)
            got = await asyncio.wait_for(kept.recv_message(), 5)
            assert got.data == b"still"
    finally:
        channel.close()
