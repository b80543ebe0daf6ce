"""Authentication modes end to end: trusted, token and jwt, with user and organization scopes.

Where a call lands is checked on NATS itself (a native subscription on the mapped subject), so
"allowed" means the message really reached the namespace the identity entitles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import nats
import pytest
import pytest_asyncio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.config import AuthMode, ConfigError, Settings
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import settled, tenant
from tests.integration._security import HttpFake, ec_key, grpcio_unary, public_pem, rsa_key

AUDIENCE = "natsgw-test"
ISSUER = "https://issuer.test"
ACT_AS = "natsgw:act-as"
ORG = pb.NamespaceScope.SCOPE_ORGANIZATION


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def expect_status(call: Awaitable[Any], status: Status) -> GRPCError:
    with pytest.raises(GRPCError) as info:
        await call
    assert info.value.status == status, info.value.message
    return info.value


async def lands_in(nc: nats.NATS, ns: Namespace, send: Callable[[str], Awaitable[Any]]) -> bytes:
    """Publish through the gateway (``send(subject)``); return what NATS delivered in ``ns``."""
    subject = f"probe.{time.monotonic_ns()}"
    sub = await nc.subscribe(ns.subject(subject))
    await settled(nc)
    await send(subject)
    msg = await sub.next_msg(timeout=2)
    await sub.unsubscribe()
    return bytes(msg.data)


def user_ns(user: str) -> Namespace:
    return Namespace(Tenant.user(user))


def org_ns(org: str) -> Namespace:
    return Namespace(Tenant.organization(org))


# -- token mode -------------------------------------------------------------------------------


@dataclasses.dataclass
class TokenSetup:
    stub: pb.NatsServiceStub
    gateway: Gateway
    alice: str
    alice_token: str
    admin_token: str
    org: str


@pytest_asyncio.fixture
async def token_gw(
    make_gateway: Callable[..., Awaitable[Gateway]], tmp_path: Path
) -> AsyncIterator[TokenSetup]:
    alice, org = tenant("alice"), tenant("org")
    alice_token, admin_token = "alice-" + "a" * 30, "admin-" + "b" * 30
    import hashlib

    tokens = {
        "tokens": [
            {
                "token_sha256": hashlib.sha256(alice_token.encode()).hexdigest(),
                "user_id": alice,
                "organizations": [org],
            },
            {"token": admin_token, "user_id": "svc-admin", "roles": [ACT_AS]},
        ]
    }
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens))
    gw = await make_gateway(auth_mode=AuthMode.TOKEN, auth_tokens_file=path)
    channel = Channel("127.0.0.1", gw.port)
    yield TokenSetup(pb.NatsServiceStub(channel), gw, alice, alice_token, admin_token, org)
    channel.close()


async def test_token_mode_refuses_missing_malformed_and_unknown_tokens(
    token_gw: TokenSetup,
) -> None:
    stub = token_gw.stub
    request = pb.PublishRequest(subject="x", data=b"1")
    error = await expect_status(stub.publish(request), Status.UNAUTHENTICATED)
    assert "Bearer" in (error.message or "")
    await expect_status(
        stub.publish(request, metadata={"authorization": f"Basic {token_gw.alice_token}"}),
        Status.UNAUTHENTICATED,
    )
    await expect_status(
        stub.publish(request, metadata={"authorization": "Bearer"}), Status.UNAUTHENTICATED
    )
    await expect_status(
        stub.publish(request, metadata=bearer("not-a-known-token-at-all")), Status.UNAUTHENTICATED
    )
    # A call the handler would answer without a namespace is refused as well...
    await expect_status(stub.get_statistics(pb.GetStatisticsRequest()), Status.UNAUTHENTICATED)
    # ...but HealthCheck stays open for probes.
    health = await stub.health_check(pb.NatsHealthCheckRequest())
    assert health.healthy


async def test_token_identity_decides_the_namespace(token_gw: TokenSetup, nc: nats.NATS) -> None:
    stub, alice = token_gw.stub, token_gw.alice
    meta = bearer(token_gw.alice_token)
    # Empty user_id (new clients) and the caller's own id (old clients) both mean alice.
    data = await lands_in(
        nc,
        user_ns(alice),
        lambda s: stub.publish(pb.PublishRequest(subject=s, data=b"empty-id"), metadata=meta),
    )
    assert data == b"empty-id"
    data = await lands_in(
        nc,
        user_ns(alice),
        lambda s: stub.publish(
            pb.PublishRequest(user_id=alice, subject=s, data=b"own-id"), metadata=meta
        ),
    )
    assert data == b"own-id"


async def test_token_acting_for_another_user_is_permission_denied(
    token_gw: TokenSetup, nc: nats.NATS
) -> None:
    victim = tenant("victim")
    sub = await nc.subscribe(user_ns(victim).subject("secret"))
    await settled(nc)
    error = await expect_status(
        token_gw.stub.publish(
            pb.PublishRequest(user_id=victim, subject="secret", data=b"x"),
            metadata=bearer(token_gw.alice_token),
        ),
        Status.PERMISSION_DENIED,
    )
    assert victim in (error.message or "") and ACT_AS in (error.message or "")
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.2)
    await sub.unsubscribe()


async def test_token_act_as_role_may_act_for_others(token_gw: TokenSetup, nc: nats.NATS) -> None:
    other = tenant("served")
    data = await lands_in(
        nc,
        user_ns(other),
        lambda s: token_gw.stub.publish(
            pb.PublishRequest(user_id=other, subject=s, data=b"on-behalf"),
            metadata=bearer(token_gw.admin_token),
        ),
    )
    assert data == b"on-behalf"


async def test_token_organization_scope_is_for_members_only(
    token_gw: TokenSetup, nc: nats.NATS
) -> None:
    stub, org = token_gw.stub, token_gw.org
    data = await lands_in(
        nc,
        org_ns(org),
        lambda s: stub.publish(
            pb.PublishRequest(organization_id=org, scope=ORG, subject=s, data=b"shared"),
            metadata=bearer(token_gw.alice_token),
        ),
    )
    assert data == b"shared"
    # organization_id without the scope keeps the user's own namespace (old clients' behaviour).
    data = await lands_in(
        nc,
        user_ns(token_gw.alice),
        lambda s: stub.publish(
            pb.PublishRequest(organization_id=org, subject=s, data=b"own"),
            metadata=bearer(token_gw.alice_token),
        ),
    )
    assert data == b"own"
    error = await expect_status(
        stub.publish(
            pb.PublishRequest(organization_id="not-" + org, scope=ORG, subject="x", data=b"x"),
            metadata=bearer(token_gw.alice_token),
        ),
        Status.PERMISSION_DENIED,
    )
    assert "member" in (error.message or "")
    await expect_status(
        stub.publish(
            pb.PublishRequest(scope=ORG, subject="x", data=b"x"),
            metadata=bearer(token_gw.alice_token),
        ),
        Status.INVALID_ARGUMENT,
    )


async def test_token_mode_with_a_grpcio_client(token_gw: TokenSetup, nc: nats.NATS) -> None:
    import grpc

    ns = user_ns(token_gw.alice)
    sub = await nc.subscribe(ns.subject("grpcio.ok"))
    await settled(nc)

    def calls() -> tuple[Any, Any]:
        with grpc.insecure_channel(f"127.0.0.1:{token_gw.gateway.port}") as channel:
            ok = grpcio_unary(
                channel,
                "Publish",
                pb.PublishRequest(subject="grpcio.ok", data=b"g"),
                pb.PublishResponse,
                metadata=(("authorization", f"Bearer {token_gw.alice_token}"),),
                timeout=5,
            )
            try:
                grpcio_unary(
                    channel,
                    "Publish",
                    pb.PublishRequest(subject="grpcio.no", data=b"g"),
                    pb.PublishResponse,
                    timeout=5,
                )
            except grpc.RpcError as exc:
                return ok, exc.code()
            return ok, None

    ok, refused = await asyncio.to_thread(calls)
    assert ok.success
    assert refused == grpc.StatusCode.UNAUTHENTICATED
    assert (await sub.next_msg(timeout=2)).data == b"g"
    await sub.unsubscribe()


async def test_token_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    from natsgw.auth import tokens as tokens_module

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tokens": [{"token": "first-token-0123456789", "user_id": "a"}]}))
    verifier = tokens_module.TokenFile(path)
    assert (await verifier.verify("first-token-0123456789")).user_id == "a"
    path.write_text(
        json.dumps({"tokens": [{"token": "second-token-0123456789xx", "user_id": "b"}]})
    )
    verifier._checked = 0.0  # skip the few seconds between checks
    assert (await verifier.verify("second-token-0123456789xx")).user_id == "b"
    with pytest.raises(Exception, match="invalid API token"):
        await verifier.verify("first-token-0123456789")


# -- jwt mode -----------------------------------------------------------------------------------


def claims(sub: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300}
    base.update(extra)
    return base


@pytest_asyncio.fixture
async def jwt_rs256(
    make_gateway: Callable[..., Awaitable[Gateway]], tmp_path: Path
) -> AsyncIterator[tuple[pb.NatsServiceStub, Any]]:
    key = rsa_key()
    path = tmp_path / "jwt.pub.pem"
    path.write_bytes(public_pem(key))
    gw = await make_gateway(
        auth_mode=AuthMode.JWT,
        jwt_key_file=path,
        jwt_algorithms=("RS256",),
        jwt_audience=AUDIENCE,
        jwt_issuer=ISSUER,
        jwt_leeway=5.0,
    )
    channel = Channel("127.0.0.1", gw.port)
    yield pb.NatsServiceStub(channel), key
    channel.close()


async def test_jwt_rs256_valid_token_and_every_kind_of_bad_one(
    jwt_rs256: tuple[pb.NatsServiceStub, Any], nc: nats.NATS
) -> None:
    stub, key = jwt_rs256
    user = tenant("jwtuser")
    good = jwt.encode(claims(user), key, algorithm="RS256")
    data = await lands_in(
        nc,
        user_ns(user),
        lambda s: stub.publish(pb.PublishRequest(subject=s, data=b"jwt"), metadata=bearer(good)),
    )
    assert data == b"jwt"

    request = pb.PublishRequest(subject="x", data=b"x")
    bad = {
        "missing": None,
        "malformed": "definitely.not.a-jwt",
        "expired": jwt.encode(
            claims(user, exp=int(time.time()) - 60, iat=int(time.time()) - 120), key, "RS256"
        ),
        "wrong audience": jwt.encode(claims(user, aud="another-service"), key, "RS256"),
        "wrong issuer": jwt.encode(claims(user, iss="https://evil.test"), key, "RS256"),
        "wrong signature": jwt.encode(claims(user), rsa_key(), algorithm="RS256"),
        "no exp": jwt.encode({"sub": user, "aud": AUDIENCE, "iss": ISSUER}, key, "RS256"),
        "alg none": jwt.encode(claims(user), None, algorithm="none"),  # type: ignore[arg-type]
        "hs256 with the public key as secret": _hs256_forged(claims(user), key),
    }
    messages = {}
    for what, token in bad.items():
        meta = None if token is None else bearer(token)
        error = await expect_status(stub.publish(request, metadata=meta), Status.UNAUTHENTICATED)
        messages[what] = error.message or ""
    assert "expired" in messages["expired"]
    assert "audience" in messages["wrong audience"]
    assert "issuer" in messages["wrong issuer"]
    assert "signature" in messages["wrong signature"]
    assert "exp" in messages["no exp"]


def _hs256_forged(payload: dict[str, Any], key: Any) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the server's public key."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(public_pem(key), header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + b64(signature)).decode()


async def test_jwt_within_leeway_is_accepted(jwt_rs256: tuple[pb.NatsServiceStub, Any]) -> None:
    stub, key = jwt_rs256
    token = jwt.encode(claims(tenant(), exp=int(time.time()) - 2), key, algorithm="RS256")
    response = await stub.publish(pb.PublishRequest(subject="x", data=b"x"), metadata=bearer(token))
    assert response.success


async def test_jwt_claims_give_organizations_roles_and_act_as(
    jwt_rs256: tuple[pb.NatsServiceStub, Any], nc: nats.NATS
) -> None:
    stub, key = jwt_rs256
    user, org, other = tenant("u"), tenant("org"), tenant("other")
    member = jwt.encode(claims(user, org_ids=[org]), key, algorithm="RS256")
    data = await lands_in(
        nc,
        org_ns(org),
        lambda s: stub.publish(
            pb.PublishRequest(organization_id=org, scope=ORG, subject=s, data=b"o"),
            metadata=bearer(member),
        ),
    )
    assert data == b"o"
    await expect_status(
        stub.publish(
            pb.PublishRequest(organization_id=tenant("org"), scope=ORG, subject="x", data=b"x"),
            metadata=bearer(member),
        ),
        Status.PERMISSION_DENIED,
    )
    await expect_status(
        stub.publish(pb.PublishRequest(user_id=other, subject="x"), metadata=bearer(member)),
        Status.PERMISSION_DENIED,
    )
    admin = jwt.encode(claims("svc", roles=[ACT_AS]), key, algorithm="RS256")
    data = await lands_in(
        nc,
        user_ns(other),
        lambda s: stub.publish(
            pb.PublishRequest(user_id=other, subject=s, data=b"a"), metadata=bearer(admin)
        ),
    )
    assert data == b"a"


async def test_jwt_hs256_with_a_shared_secret(
    make_gateway: Callable[..., Awaitable[Gateway]], tmp_path: Path
) -> None:
    secret = b"s" * 48
    path = tmp_path / "hs.secret"
    path.write_bytes(secret)
    gw = await make_gateway(
        auth_mode=AuthMode.JWT,
        jwt_key_file=path,
        jwt_algorithms=("HS256",),
        jwt_audience=AUDIENCE,
    )
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        good = jwt.encode(claims(tenant()), secret, algorithm="HS256")
        assert (await stub.publish(pb.PublishRequest(subject="x"), metadata=bearer(good))).success
        forged = jwt.encode(claims(tenant()), b"t" * 48, algorithm="HS256")
        await expect_status(
            stub.publish(pb.PublishRequest(subject="x"), metadata=bearer(forged)),
            Status.UNAUTHENTICATED,
        )
    finally:
        channel.close()


class FakeJwks(HttpFake):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.app.router.add_get("/.well-known/jwks.json", self._jwks)

    async def _jwks(self, _request: Any) -> Any:
        from aiohttp import web

        self.fetches += 1
        return web.json_response({"keys": self.keys})


def jwk_of(key: Any, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    data.update(kid=kid, use="sig", alg="ES256")
    return data


async def test_jwt_es256_from_a_jwks_url_follows_key_rotation(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    jwks = FakeJwks()
    await jwks.start()
    first, second = ec_key(), ec_key()
    jwks.keys = [jwk_of(first, "k1")]
    gw = await make_gateway(
        auth_mode=AuthMode.JWT,
        jwt_jwks_url=f"{jwks.url}/.well-known/jwks.json",
        jwt_algorithms=("ES256",),
        jwt_audience=AUDIENCE,
    )
    verifier = gw.authenticator.verifier  # type: ignore[attr-defined]
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        token1 = jwt.encode(claims(tenant()), first, algorithm="ES256", headers={"kid": "k1"})
        for _ in range(3):
            assert (
                await stub.publish(pb.PublishRequest(subject="x"), metadata=bearer(token1))
            ).success
        assert jwks.fetches == 1  # cached
        # The issuer rotates: a token with a new kid makes the gateway refetch (rate-limited).
        jwks.keys = [jwk_of(first, "k1"), jwk_of(second, "k2")]
        verifier._jwks._fetched -= 60
        token2 = jwt.encode(claims(tenant()), second, algorithm="ES256", headers={"kid": "k2"})
        assert (await stub.publish(pb.PublishRequest(subject="x"), metadata=bearer(token2))).success
        assert jwks.fetches == 2
        unknown = jwt.encode(claims(tenant()), ec_key(), algorithm="ES256", headers={"kid": "k9"})
        error = await expect_status(
            stub.publish(pb.PublishRequest(subject="x"), metadata=bearer(unknown)),
            Status.UNAUTHENTICATED,
        )
        assert "k9" in (error.message or "")
        assert jwks.fetches == 2  # no refetch storm: last fetch was under 10 s ago
    finally:
        channel.close()
        await jwks.stop()


# -- trusted mode -------------------------------------------------------------------------------


def test_trusted_mode_refuses_a_non_loopback_listener_without_acknowledgement() -> None:
    with pytest.raises(ConfigError, match="NATSGW_TRUSTED_ALLOW_REMOTE"):
        Settings.from_env({"GRPC_HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match="NATSGW_TRUSTED_ALLOW_REMOTE"):
        Gateway(Settings(grpc_host="10.1.2.3"))
    allowed = Settings.from_env({"GRPC_HOST": "0.0.0.0", "NATSGW_TRUSTED_ALLOW_REMOTE": "true"})
    assert allowed.trusted_allow_remote
    token_mode = Settings.from_env(
        {"GRPC_HOST": "0.0.0.0", "NATSGW_AUTH_MODE": "token", "NATSGW_AUTH_TOKENS_FILE": "/x"}
    )
    assert token_mode.auth_mode is AuthMode.TOKEN


async def test_trusted_mode_says_so_at_start_up(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    import structlog

    with structlog.testing.capture_logs() as logs:
        await make_gateway()
    assert any(entry["event"] == "auth_mode_trusted" for entry in logs)


def test_auth_settings_are_checked_at_start() -> None:
    with pytest.raises(ConfigError, match="NATSGW_AUTH_TOKENS_FILE"):
        Settings.from_env({"NATSGW_AUTH_MODE": "token"})
    with pytest.raises(ConfigError, match="NATSGW_JWT_AUDIENCE"):
        Settings.from_env({"NATSGW_AUTH_MODE": "jwt", "NATSGW_JWT_KEY_FILE": "/k"})
    with pytest.raises(ConfigError, match="exactly one"):
        Settings.from_env({"NATSGW_AUTH_MODE": "jwt", "NATSGW_JWT_AUDIENCE": "a"})
    with pytest.raises(ConfigError, match="NATSGW_AUTH_MODE"):
        Settings.from_env({"NATSGW_AUTH_MODE": "ldap"})
    with pytest.raises(ConfigError, match="NATSGW_JWT_ALGORITHMS"):
        Settings.from_env({"NATSGW_JWT_ALGORITHMS": "RS256,XX1"})


def test_token_file_errors_name_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"tokens": [{"token": "short", "user_id": "a"}]}')
    with pytest.raises(ConfigError, match=r"NATSGW_AUTH_TOKENS_FILE.*tokens\[0\]"):
        Gateway(
            Settings(auth_mode=AuthMode.TOKEN, auth_tokens_file=path),
        )


async def test_jwks_unreachable_is_unavailable_then_recovers(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    from tests.integration._security import free_port

    port = free_port()
    gw = await make_gateway(
        auth_mode=AuthMode.JWT,
        jwt_jwks_url=f"http://127.0.0.1:{port}/.well-known/jwks.json",
        jwt_algorithms=("ES256",),
        jwt_audience=AUDIENCE,
    )
    key = ec_key()
    token = jwt.encode(claims(tenant()), key, algorithm="ES256", headers={"kid": "k1"})
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    jwks = FakeJwks()
    try:
        # The identity provider is down: a retryable UNAVAILABLE, not "your token is bad".
        error = await expect_status(
            stub.publish(pb.PublishRequest(subject="x"), metadata=bearer(token)),
            Status.UNAVAILABLE,
        )
        assert "JWKS" in (error.message or "")
        jwks.keys = [jwk_of(key, "k1")]
        await jwks.start(port)
        gw.authenticator.verifier._jwks._fetched -= 5  # type: ignore[attr-defined]
        reply = await stub.publish(pb.PublishRequest(subject="x"), metadata=bearer(token))
        assert reply.success
    finally:
        channel.close()
        await jwks.stop()
