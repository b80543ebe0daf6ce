"""Static API tokens from a JSON file (``NATSGW_AUTH_TOKENS_FILE``).

The file maps tokens to identities::

    {"tokens": [
        {"token_sha256": "<hex SHA-256 of the token>", "user_id": "alice",
         "organizations": ["acme"], "roles": []},
        {"token": "<the token itself, for tests and quick set-ups>", "user_id": "svc-billing",
         "roles": ["natsgw:act-as"]}
    ]}

Only SHA-256 digests are kept in memory; a presented token is hashed and the digest looked up,
so no comparison ever runs over the secret itself. The file is re-read when it changes (checked
at most every ``NATSGW_AUTH_RECHECK_INTERVAL`` seconds), so tokens can be rotated without a
restart, and a removed token also ends the streams it opened (natsgw.auth.expiry); a broken edit
keeps the previous tokens and logs why.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import structlog

from natsgw.auth.identity import Identity
from natsgw.config import ConfigError
from natsgw.errors import Unauthenticated

log = structlog.get_logger("natsgw.auth")

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_RECHECK_SECONDS = 5.0


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _strings(entry: dict[str, Any], key: str, where: str) -> frozenset[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: {key!r} must be a list of non-empty strings")
    return frozenset(value)


def parse_tokens(text: str, source: str = "tokens file") -> dict[str, Identity]:
    """Digest -> identity; ValueError naming the entry when the content is malformed."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from None
    entries = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'{source} must be a JSON object with a "tokens" list')
    table: dict[str, Identity] = {}
    for index, entry in enumerate(entries):
        where = f"{source}: tokens[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        user_id = entry.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"{where}: 'user_id' must be a non-empty string")
        if "token_sha256" in entry:
            digest = entry["token_sha256"]
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise ValueError(f"{where}: 'token_sha256' must be 64 hex digits")
            digest = digest.lower()
        elif isinstance(entry.get("token"), str) and len(entry["token"]) >= 16:
            digest = token_digest(entry["token"])
        else:
            raise ValueError(
                f"{where}: needs 'token_sha256' (hex SHA-256 of the token) or 'token' "
                "(at least 16 characters)"
            )
        if digest in table:
            raise ValueError(f"{where}: the same token appears twice")
        table[digest] = Identity(
            user_id=user_id,
            organizations=_strings(entry, "organizations", where),
            roles=_strings(entry, "roles", where),
            method="token",
        )
    return table


class TokenFile:
    """A :class:`natsgw.auth.identity.TokenVerifier` over the tokens file."""

    def __init__(self, path: Path, recheck: float = _RECHECK_SECONDS) -> None:
        self.path = path
        self._recheck = recheck
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        try:
            self._table = self._load()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"NATSGW_AUTH_TOKENS_FILE={str(path)!r}: {exc}") from None

    def _load(self) -> dict[str, Identity]:
        stat = os.stat(self.path)
        table = parse_tokens(self.path.read_text("utf-8"), str(self.path))
        self._stamp = (stat.st_mtime, stat.st_size)
        return table

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._recheck:
            return
        self._checked = now
        try:
            stat = os.stat(self.path)
            if (stat.st_mtime, stat.st_size) == self._stamp:
                return
            self._table = self._load()
            log.info("auth_tokens_reloaded", path=str(self.path), tokens=len(self._table))
        except (OSError, ValueError) as exc:
            log.error("auth_tokens_reload_failed", path=str(self.path), error=str(exc))

    async def verify(self, token: str) -> Identity:
        self._maybe_reload()
        digest = token_digest(token)
        # Looked up by SHA-256 digest: timing reveals nothing usable about a stored token.
        identity = self._table.get(digest)
        if identity is None:
            raise Unauthenticated("invalid API token")
        return identity
