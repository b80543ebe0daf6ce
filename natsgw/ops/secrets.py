"""Secrets never leave the process as text: the one place that masks them.

Everything that prints or answers text passes through here: the structlog chain
(:func:`redact_event`, so no log line can carry a URL's password whoever logs it), error answers
(:func:`natsgw.errors.to_grpc_error`), ``check-config`` (:func:`shown_setting`) and the error
texts that name an endpoint (:func:`mask_url`). A URL keeps its scheme, user name, host and path
(what an operator needs to see which endpoint failed); its password, or a token standing alone in
the userinfo, becomes ``***``. Settings whose names say they are secrets are never shown at all.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

MASK = "***"

#: ``scheme://userinfo@``: userinfo is whatever lies between ``://`` and ``@`` without a ``/``,
#: whitespace or another ``@`` (so ``http://h/p@x`` is not taken for userinfo).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@]+)@")

#: Setting names whose values are secrets (``nats_password``, ``consul_token``, …).
_SECRET_NAME = re.compile(r"(password|token|secret)$", re.IGNORECASE)


def _masked(match: re.Match[str]) -> str:
    user, sep, _ = match.group("userinfo").partition(":")
    # "user:password" keeps the user; a lone userinfo (nats://TOKEN@host) is a token.
    return f"{match.group('scheme')}{user + ':' if sep else ''}{MASK}@"


def mask_text(text: str) -> str:
    """Every URL's userinfo in ``text`` masked (cheap when there is no ``://``)."""
    if "://" not in text:
        return text
    return _USERINFO.sub(_masked, text)


def mask_url(url: str) -> str:
    """One URL with its password (or lone token) masked."""
    return mask_text(url)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def shown_setting(name: str, value: Any) -> Any:
    """A setting as ``check-config`` may print it."""
    if is_secret_name(name):
        return MASK if value else value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, tuple):
        return tuple(mask_text(v) if isinstance(v, str) else v for v in value)
    return value


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def redact_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: masks URL userinfo in every value of every event."""
    for key, value in event.items():
        if not isinstance(value, int | float | bool | type(None)):
            event[key] = _scrub(value)
    return event
