"""Credential verifiers behind :class:`~natsgw.auth.identity.BearerAuthenticator`; the factory."""

from __future__ import annotations

from natsgw.auth.identity import Authenticator, BearerAuthenticator, TrustedAuthenticator
from natsgw.config import AuthMode, Settings


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator NATSGW_AUTH_MODE asks for; files are read now, so errors show at start."""
    if settings.auth_mode is AuthMode.TOKEN:
        from natsgw.auth.tokens import TokenFile

        assert settings.auth_tokens_file is not None  # Settings.validated()
        return BearerAuthenticator(
            TokenFile(settings.auth_tokens_file, settings.auth_recheck_interval),
            act_as_role=settings.auth_act_as_role,
        )
    if settings.auth_mode is AuthMode.JWT:
        from natsgw.auth.jwts import JwtVerifier

        return BearerAuthenticator(
            JwtVerifier.from_settings(settings), act_as_role=settings.auth_act_as_role
        )
    return TrustedAuthenticator()
