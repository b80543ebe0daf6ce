"""Long-lived calls re-check their credential: one watch per streaming call, not per handler.

A stream (Subscribe, QueueSubscribe, Consume, KVWatch, ObjectGetStream, …) is admitted once, but
may outlive what admitted it. :class:`CredentialWatch` re-verifies the call's bearer credential
through the same verifier that admitted it:

- at the credential's own end (a JWT's ``exp`` plus ``NATSGW_JWT_LEEWAY``: ``Identity.expires_at``),
- and every ``NATSGW_AUTH_RECHECK_INTERVAL`` seconds (the tokens file is re-read on that rhythm
  too, so a removed token ends its streams within one interval; a JWKS that drops a key likewise).

When the credential no longer verifies, the call pipeline (:mod:`natsgw.pipeline.chain`) ends
the call with :func:`end_error`: UNAUTHENTICATED and the reason. An identity provider that cannot
be reached is not a verdict: the stream carries on, unless the credential's own expiry has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw.auth.identity import (
    BearerAuthenticator,
    Identity,
    Metadata,
    Principal,
    TokenVerifier,
    bearer_token,
)
from natsgw.errors import GatewayError, Unauthenticated

log = structlog.get_logger("natsgw.auth")


class CredentialWatch:
    """Calls ``end(reason)`` once the credential stops verifying; stop it when the call ends."""

    def __init__(
        self,
        verifier: TokenVerifier,
        token: str,
        identity: Identity,
        end: Callable[[str], None],
        recheck: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._token = token
        self._identity = identity
        self._end = end
        self._recheck = recheck
        self._clock = clock
        #: The status the call was ended with, once it was.
        self.ended: GRPCError | None = None
        self._task: asyncio.Task[None] | None = asyncio.create_task(
            self._run(), name="natsgw-credential-watch"
        )

    def _delay(self) -> float:
        expires_at = self._identity.expires_at
        if expires_at is None:
            return self._recheck
        return max(0.0, min(self._recheck, expires_at - self._clock()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._delay())
            try:
                self._identity = await self._verifier.verify(self._token)
            except Unauthenticated as exc:
                self._finish(exc.message)
                return
            except GatewayError as exc:  # cannot verify now (JWKS down): not the caller's fault
                expires_at = self._identity.expires_at
                if expires_at is not None and self._clock() >= expires_at:
                    self._finish("token has expired")
                    return
                log.warning("credential_recheck_failed", error=exc.message)

    def _finish(self, reason: str) -> None:
        log.info("stream_credential_ended", who=self._identity.user_id, reason=reason)
        self._task = None
        self.ended = end_error(reason)
        self._end(reason)

    def stop(self) -> None:
        """The call is over: stop watching (the task's last step is a sleep, so cancel ends it)."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()


def end_error(reason: str) -> GRPCError:
    return GRPCError(
        Status.UNAUTHENTICATED,
        f"credential no longer valid ({reason}); the stream was ended: reconnect with a valid one",
    )


def watch(
    authenticator: BearerAuthenticator,
    metadata: Metadata,
    principal: Principal,
    end: Callable[[str], None],
    recheck: float,
) -> CredentialWatch:
    """Watch the credential in ``metadata`` that proved ``principal`` (no second verification:
    the principal carries its expiry); ``end(reason)`` is called if it stops verifying."""
    proven = Identity(
        principal.authenticated_as, method=principal.method, expires_at=principal.expires_at
    )
    return CredentialWatch(authenticator.verifier, bearer_token(metadata), proven, end, recheck)
