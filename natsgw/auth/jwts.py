"""Bearer JWTs verified with PyJWT: signature, algorithm, issuer, audience, expiry (with leeway).

Keys come from ``NATSGW_JWT_KEY_FILE`` (a PEM public key, a JWKS JSON document, or for HS256 a
shared secret) or from ``NATSGW_JWT_JWKS_URL`` (fetched with aiohttp, cached, refreshed every
``NATSGW_JWT_JWKS_REFRESH`` seconds, and refetched early — at most every 10 s — when a token names a
key id the cache does not know, which is how key rotation shows up).

A token's ``alg`` must be listed in ``NATSGW_JWT_ALGORITHMS`` *and* match the key's family (RSA
keys verify RS*, EC keys ES*, secrets HS*), so a public key can never be used as an HMAC secret.
The claims named by ``NATSGW_JWT_USER_CLAIM`` / ``_ORGANIZATIONS_CLAIM`` / ``_ROLES_CLAIM`` (dotted
paths such as ``realm_access.roles`` reach nested claims) give the identity.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from natsgw.auth.identity import Identity
from natsgw.config import ConfigError, Settings
from natsgw.errors import Unauthenticated, Unavailable, excerpt
from natsgw.ops.secrets import mask_url

log = structlog.get_logger("natsgw.auth")

#: Refetch the JWKS for an unknown key id at most this often.
_MIN_REFETCH = 10.0
#: Without any key (the JWKS could not be fetched), try again at most this often.
_RETRY_EMPTY = 2.0
_FETCH_TIMEOUT = 5.0


def _family(alg: str) -> str:
    return alg[:2].upper()  # "RS", "ES", "HS"


class _Key:
    """One verification key and the algorithm family it may verify."""

    __slots__ = ("family", "key", "kid")

    def __init__(self, key: Any, family: str, kid: str | None) -> None:
        self.key = key
        self.family = family
        self.kid = kid


def _keys_from_jwks(doc: Mapping[str, Any]) -> list[_Key]:
    keys: list[_Key] = []
    for raw in doc.get("keys", []):
        if not isinstance(raw, dict):
            continue
        if raw.get("use", "sig") != "sig":
            continue
        kty = raw.get("kty")
        family = {"RSA": "RS", "EC": "ES", "oct": "HS"}.get(str(kty))
        if family is None:
            continue
        try:
            jwk = jwt.PyJWK.from_dict(raw)
        except jwt.PyJWTError as exc:
            log.warning("jwks_key_skipped", kid=raw.get("kid"), error=str(exc))
            continue
        keys.append(_Key(jwk.key, family, raw.get("kid")))
    return keys


def _load_key_file(path: Path) -> list[_Key]:
    data = path.read_bytes()
    text = data.strip()
    if text.startswith(b"{"):
        keys = _keys_from_jwks(json.loads(text))
        if not keys:
            raise ValueError("the JWKS document holds no usable signing key")
        return keys
    if text.startswith(b"-----BEGIN"):
        public = load_pem_public_key(text)
        if isinstance(public, rsa.RSAPublicKey):
            return [_Key(public, "RS", None)]
        if isinstance(public, ec.EllipticCurvePublicKey):
            return [_Key(public, "ES", None)]
        raise ValueError("only RSA and EC public keys are supported")
    if len(text) < 32:
        raise ValueError("an HS256 secret must be at least 32 bytes long")
    return [_Key(text, "HS", None)]


class JwksCache:
    """Keys of a JWKS URL, refreshed periodically and on unknown key ids."""

    def __init__(self, url: str, refresh: float) -> None:
        self.url = url
        self.refresh = refresh
        self._keys: list[_Key] = []
        self._fetched = 0.0
        self.last_error = ""
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_FETCH_TIMEOUT)
            )
        self._fetched = time.monotonic()
        try:
            async with self._session.get(self.url) as response:
                response.raise_for_status()
                doc = await response.json(content_type=None)
            keys = _keys_from_jwks(doc if isinstance(doc, dict) else {})
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            log.warning("jwks_fetch_failed", url=mask_url(self.url), error=self.last_error)
            return
        self.last_error = ""
        self._keys = keys
        log.info("jwks_fetched", url=mask_url(self.url), keys=len(keys))

    async def keys(self, kid: str | None) -> list[_Key]:
        async with self._lock:
            age = time.monotonic() - self._fetched
            never = self._fetched == 0.0
            stale = age > self.refresh
            missing = not self._keys and age > _RETRY_EMPTY  # IdP was down: retry, gently
            unknown = kid is not None and all(k.kid != kid for k in self._keys)
            if never or stale or missing or (unknown and age > _MIN_REFETCH):
                await self._fetch()
            return self._keys

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _string_set(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(v for v in value.replace(",", " ").split() if v)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(v for v in value if v)
    raise Unauthenticated(f"token claim {name!r} must be a string or a list of strings")


class JwtVerifier:
    """A :class:`natsgw.auth.identity.TokenVerifier` for JWTs."""

    def __init__(
        self,
        *,
        static_keys: list[_Key] | None = None,
        jwks: JwksCache | None = None,
        algorithms: tuple[str, ...],
        audience: str,
        issuer: str = "",
        leeway: float = 30.0,
        user_claim: str = "sub",
        organizations_claim: str = "org_ids",
        roles_claim: str = "roles",
    ) -> None:
        self._static = static_keys or []
        self._jwks = jwks
        self.algorithms = algorithms
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.user_claim = user_claim
        self.organizations_claim = organizations_claim
        self.roles_claim = roles_claim

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier:
        static: list[_Key] | None = None
        jwks: JwksCache | None = None
        if settings.jwt_key_file is not None:
            try:
                static = _load_key_file(settings.jwt_key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"NATSGW_JWT_KEY_FILE={str(settings.jwt_key_file)!r}: {exc}"
                ) from None
            families = {k.family for k in static}
            if not any(_family(a) in families for a in settings.jwt_algorithms):
                raise ConfigError(
                    f"NATSGW_JWT_ALGORITHMS={','.join(settings.jwt_algorithms)} has no algorithm "
                    f"for the key in NATSGW_JWT_KEY_FILE (a {'/'.join(sorted(families))} key)"
                )
        else:
            jwks = JwksCache(settings.jwt_jwks_url, settings.jwt_jwks_refresh)
        return cls(
            static_keys=static,
            jwks=jwks,
            algorithms=settings.jwt_algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
            user_claim=settings.jwt_user_claim,
            organizations_claim=settings.jwt_organizations_claim,
            roles_claim=settings.jwt_roles_claim,
        )

    async def _key(self, kid: str | None, alg: str) -> Any:
        keys = self._static if self._jwks is None else await self._jwks.keys(kid)
        family = _family(alg)
        usable = [k for k in keys if k.family == family and (kid is None or k.kid in (kid, None))]
        if kid is None and len(usable) > 1:
            raise Unauthenticated("token has no 'kid' header and several keys could verify it")
        if not usable:
            if self._jwks is not None and not keys and self._jwks.last_error:
                # The identity provider is unreachable: not the caller's fault, and retryable.
                raise Unavailable(
                    f"cannot verify tokens right now: the JWKS at {mask_url(self._jwks.url)} is "
                    f"unreachable ({self._jwks.last_error}); retry shortly"
                )
            if self._jwks is not None and kid is not None:
                raise Unauthenticated(f"token signed with unknown key id {excerpt(kid)}")
            raise Unauthenticated(f"no configured key verifies {alg} tokens")
        return usable[0].key

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed bearer token: not a JWT") from None
        alg = str(header.get("alg", ""))
        if alg not in self.algorithms:
            raise Unauthenticated(
                f"token algorithm {excerpt(alg)} is not accepted "
                f"(allowed: {', '.join(self.algorithms)})"
            )
        kid = header.get("kid")
        key = await self._key(str(kid) if kid is not None else None, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer or None,
                leeway=self.leeway,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"token audience is not {self.audience!r} (it was issued for another service)"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"token issuer is not {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature is invalid") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token is not valid yet (nbf/iat in the future)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the required claim {exc.claim!r}") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        user = _claim(claims, self.user_claim)
        if not isinstance(user, str) or not user:
            raise Unauthenticated(
                f"token has no user id in claim {self.user_claim!r} (NATSGW_JWT_USER_CLAIM)"
            )
        return Identity(
            user_id=user,
            organizations=_string_set(
                _claim(claims, self.organizations_claim), self.organizations_claim
            ),
            roles=_string_set(_claim(claims, self.roles_claim), self.roles_claim),
            method="jwt",
            expires_at=float(claims["exp"]) + self.leeway,
        )

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()
