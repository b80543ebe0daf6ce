"""CredentialWatch decides when a long-lived call's credential is over (pure timing, no server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from natsgw.auth.expiry import CredentialWatch
from natsgw.auth.identity import Identity
from natsgw.errors import Unauthenticated, Unavailable

pytestmark = pytest.mark.asyncio


class _Verifier:
    def __init__(self, outcome: Exception | Identity) -> None:
        self.outcome = outcome
        self.calls = 0

    async def verify(self, token: str) -> Identity:
        self.calls += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


async def test_an_unreachable_identity_provider_does_not_end_a_valid_stream() -> None:
    ended: list[str] = []
    identity = Identity("u", method="jwt", expires_at=time.time() + 0.4)
    verifier = _Verifier(Unavailable("JWKS unreachable"))
    watch = CredentialWatch(verifier, "t", identity, ended.append, recheck=0.05)
    await asyncio.sleep(0.25)
    assert ended == [] and verifier.calls >= 2  # rechecked, could not verify, carried on
    await asyncio.sleep(0.3)
    assert ended == ["token has expired"]  # ...but never past the credential's own end
    assert watch.ended is not None
    watch.stop()


async def test_revoked_credential_ends_once_and_stop_is_quiet() -> None:
    ended: list[str] = []
    verifier = _Verifier(Unauthenticated("invalid API token"))
    watch = CredentialWatch(verifier, "t", Identity("u", method="token"), ended.append, 0.05)
    await asyncio.sleep(0.2)
    assert ended == ["invalid API token"] and verifier.calls == 1
    watch.stop()
    other = CredentialWatch(verifier, "t", Identity("u"), ended.append, 10.0)
    other.stop()
    await asyncio.sleep(0)
    assert ended == ["invalid API token"] and verifier.calls == 1
