"""The embedded nats-server's credentials: generated once per data directory, kept private.

Without them any local process could connect to the embedded nats-server and read or write every
tenant's data, bypassing natsgw's tenancy. natsgw draws a random token (32
bytes, base64url) the first time it starts on a data directory and keeps it in
``<data dir>/nats-credentials.json`` (``{"token": "..."}``). A token rather than a user and
password: nats-server warns at every start about a plaintext password in its config, not about
a token, and the file holding either is private anyway:

- mode 0600, created atomically (written to a private temporary file, then hard-linked into
  place, so a reader never sees it half written and two starters never overwrite each other:
  the second one reads the first one's file);
- reused across restarts of the same data directory (the server and natsgw agree without any
  setting; a supervisor hands it to its workers through a pipe);
- never logged, never on a command line (nats-server reads it from its 0600 config file).

A file whose mode lets others read it is tightened to 0600 (and said so); one that is not valid
stops start-up with a message saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("natsgw.ops.credentials")

CREDENTIALS_NAME = "nats-credentials.json"
#: The user of cluster routes (test clusters), whose password is the token.
ROUTE_USER = "natsgw"
#: What a token may be made of: safe in a URL's userinfo and in the server config.
_SAFE = re.compile(r"[A-Za-z0-9_-]{32,128}")
#: 32 random bytes, base64url: 43 characters.
_TOKEN_BYTES = 32
_MAX_FILE = 4096


class CredentialsError(RuntimeError):
    """The credentials file cannot be read or is not valid; the message says what to do."""


@dataclass(frozen=True, slots=True)
class NatsCredentials:
    """The token nats-server takes; printed (repr) without it."""

    token: str

    def __repr__(self) -> str:
        return "NatsCredentials(token='***')"

    def url(self, address: str) -> str:
        """``address`` (``scheme://host:port``) with the token as its userinfo, as nats clients
        take it (``nats://TOKEN@host:port``)."""
        scheme, sep, rest = address.partition("://")
        if not sep or "@" in rest:
            return address
        return f"{scheme}://{self.token}@{rest}"

    def route_url(self, address: str) -> str:
        """A cluster route's ``address`` with the route user and the token as its password."""
        scheme, sep, rest = address.partition("://")
        if not sep or "@" in rest:
            return address
        return f"{scheme}://{ROUTE_USER}:{self.token}@{rest}"


def generate() -> NatsCredentials:
    return NatsCredentials(secrets.token_urlsafe(_TOKEN_BYTES))


def load_or_create(data_dir: Path) -> NatsCredentials:
    """The data directory's credentials, made on first use."""
    path = data_dir / CREDENTIALS_NAME
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    _create(path, generate())
    return _read(path)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, mode 0600 from the first byte on."""
    tmp = _private_temp(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create(path: Path, creds: NatsCredentials) -> None:
    text = json.dumps({"token": creds.token}) + "\n"
    tmp = _private_temp(path, text)
    try:
        # link(), unlike rename(), fails when the name exists: the first creator wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    log.info("nats_credentials_created", path=str(path))


def _private_temp(path: Path, text: str) -> str:
    """A new file beside ``path`` holding ``text``, synced, mode 0600 (mkstemp: O_EXCL)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _read(path: Path) -> NatsCredentials:
    """Read and check the file; FileNotFoundError when there is none yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise CredentialsError(f"{path} is a symbolic link, not natsgw's file; remove it") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CredentialsError(f"{path} is not a regular file; remove it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
            log.warning(
                "nats_credentials_mode_tightened",
                path=str(path),
                was=f"{stat.S_IMODE(info.st_mode):o}",
                detail="other users could read it: it is now 0600",
            )
        raw = os.read(fd, _MAX_FILE + 1)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw) if len(raw) <= _MAX_FILE else None
    except ValueError:
        data = None
    token = data.get("token") if isinstance(data, dict) else None
    if not (isinstance(token, str) and _SAFE.fullmatch(token)):
        raise CredentialsError(
            f"{path} is not a valid natsgw credentials file (JSON with a token of 32 to 128 "
            "letters, digits, '-' or '_'); remove it and natsgw makes a new one"
        )
    return NatsCredentials(token)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
