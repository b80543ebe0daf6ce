"""Pure parts of authentication: bearer parsing, the tokens file, the bearer policy, audit rules."""

from __future__ import annotations

import hashlib
import json

import pytest

from natsgw._generated.isa import nats as pb
from natsgw.auth.identity import (
    BearerAuthenticator,
    Identity,
    Scope,
    bearer_token,
)
from natsgw.auth.tokens import parse_tokens
from natsgw.errors import InvalidArgument, PermissionDenied, Unauthenticated
from natsgw.pipeline.chain import resource_of
from natsgw.pipeline.policy import POLICIES, SERVICE
from natsgw.tenancy import Tenant


def test_bearer_token_parsing() -> None:
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "bearer   abc "}) == "abc"
    assert bearer_token({"authorization": b"Bearer xyz"}) == "xyz"
    for bad in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}):
        with pytest.raises(Unauthenticated):
            bearer_token(bad)


def test_tokens_file_keeps_only_digests() -> None:
    token = "t" * 20
    table = parse_tokens(
        json.dumps(
            {
                "tokens": [
                    {"token": token, "user_id": "a", "organizations": ["o"], "roles": ["r"]},
                    {"token_sha256": "AB" * 32, "user_id": "b"},
                ]
            }
        )
    )
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert set(table) == {digest, "ab" * 32}
    assert table[digest] == Identity("a", frozenset({"o"}), frozenset({"r"}), "token")
    assert token not in repr(table)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{}", '"tokens" list'),
        ('{"tokens": [{"user_id": "a"}]}', "token_sha256"),
        ('{"tokens": [{"token": "short", "user_id": "a"}]}', "at least 16"),
        (json.dumps({"tokens": [{"token": "x" * 16, "user_id": ""}]}), "user_id"),
        ('{"tokens": [{"token_sha256": "zz", "user_id": "a"}]}', "64 hex"),
        (json.dumps({"tokens": [{"token": "x" * 16, "user_id": "a", "roles": "r"}]}), "roles"),
        (
            json.dumps({"tokens": [{"token": "x" * 16, "user_id": u} for u in ("a", "b")]}),
            "twice",
        ),
    ],
)
def test_tokens_file_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_tokens(text)


class _Fixed:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.calls = 0

    async def verify(self, token: str) -> Identity:
        self.calls += 1
        if token != "good":
            raise Unauthenticated("invalid")
        return self.identity


async def test_bearer_policy() -> None:
    verifier = _Fixed(Identity("alice", frozenset({"acme"}), frozenset(), "jwt"))
    auth = BearerAuthenticator(verifier, act_as_role="admin")
    good = {"authorization": "Bearer good"}
    p = await auth.authenticate(good, "", "", Scope.USER)
    assert (p.user_id, p.tenant, p.acting_as) == ("alice", Tenant.user("alice"), False)
    p = await auth.authenticate(good, "alice", "acme", Scope.ORGANIZATION)
    assert p.tenant == Tenant.organization("acme") and p.authenticated_as == "alice"
    # One verification per authenticate(); the pipeline calls it once per call
    # (tests/integration/test_pipeline.py checks that).
    assert verifier.calls == 2
    with pytest.raises(PermissionDenied):
        await auth.authenticate(good, "bob", "", Scope.USER)
    with pytest.raises(PermissionDenied):
        await auth.authenticate(good, "", "other", Scope.ORGANIZATION)
    with pytest.raises(InvalidArgument):
        await auth.authenticate(good, "", "", Scope.ORGANIZATION)
    with pytest.raises(Unauthenticated):
        await auth.authenticate({"authorization": "Bearer bad"}, "", "", Scope.USER)


async def test_act_as_role() -> None:
    auth = BearerAuthenticator(
        _Fixed(Identity("svc", roles=frozenset({"admin"}))), act_as_role="admin"
    )
    good = {"authorization": "Bearer good"}
    p = await auth.authenticate(good, "bob", "", Scope.USER)
    assert (p.user_id, p.authenticated_as, p.acting_as) == ("bob", "svc", True)
    p = await auth.authenticate(good, "", "anyorg", Scope.ORGANIZATION)
    assert p.tenant == Tenant.organization("anyorg") and p.acting_as


def test_audit_classification() -> None:
    changing = [
        "Publish",
        "PublishBatch",
        "KVPut",
        "KVDelete",
        "CreateStream",
        "PurgeStream",
        "AckMessage",
        "AckMessages",
        "NakMessage",
        "ObjectPutStream",
        "Request",
        "Unsubscribe",
        "KVCreateBucket",
        "PublishToStreamBatch",
        "UpdateStream",
    ]
    reading = [
        "KVGet",
        "KVKeys",
        "ListStreams",
        "GetStreamInfo",
        "Subscribe",
        "Consume",
        "KVWatch",
        "HealthCheck",
        "GetStatistics",
        "PullMessages",
        "ObjectGetStream",
    ]
    assert all(POLICIES[SERVICE + rpc].changes for rpc in changing)
    assert not any(POLICIES[SERVICE + rpc].changes for rpc in reading)


def test_resource_is_the_tenants_own_naming() -> None:
    assert resource_of(pb.KvPutRequest(bucket="b", key="k", value=b"secret")) == {
        "bucket": "b",
        "key": "k",
    }
    assert resource_of(pb.CreateStreamRequest(config=pb.StreamConfig(name="orders"))) == {
        "config.name": "orders"
    }
    streamed = pb.ObjectPutStreamRequest(header=pb.ObjectPutHeader(bucket="f", object_name="o"))
    assert resource_of(streamed.header, streamed) == {"bucket": "f", "object_name": "o"}
    assert resource_of(pb.PublishBatchRequest(messages=[pb.NatsMessage()] * 3)) == {"messages": 3}
