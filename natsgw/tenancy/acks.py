"""Stateless ack tokens: a JetStream delivery handle any gateway replica can act on.

A JetStream delivery is acknowledged by publishing to its reply subject
(``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``, or the
longer form with domain and account hash). The gateway hands that subject to the client inside
an opaque token, signed with HMAC-SHA256 over the tenant key and the subject, so that

- the client cannot forge or alter it (any change breaks the signature),
- a token belongs to exactly one tenant: presented by another, it is refused,
- any replica sharing ``NATSGW_ACK_TOKEN_SECRET`` can verify it without shared state.

Without that setting every process draws a random secret at import: tokens then work only on the
replica (process) that issued them. Pure module: no I/O, no NATS client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from natsgw.errors import InvalidArgument, PermissionDenied

_VERSION = b"1"
_SEP = "~"
_MAC_BYTES = 16  # 128-bit truncated HMAC-SHA256: ample against forgery
_PROCESS_SECRET = secrets.token_bytes(32)
#: Tokens longer than this are refused before any work (a NATS subject is at most a few KiB).
MAX_TOKEN_CHARS = 4096

_V1_TOKENS = 9
_V2_MIN_TOKENS = 11


@dataclass(frozen=True, slots=True)
class AckSubject:
    """What a JetStream ack reply subject says about its delivery."""

    subject: str
    stream: str
    consumer: str
    num_delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    num_pending: int


def parse_ack_subject(subject: str) -> AckSubject | None:
    """Parse a ``$JS.ACK`` reply subject; None when it is not one."""
    tokens = subject.split(".")
    if len(tokens) < _V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    try:
        if len(tokens) == _V1_TOKENS:
            stream, consumer = tokens[2], tokens[3]
            numbers = tokens[4:9]
        elif len(tokens) >= _V2_MIN_TOKENS:
            # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>
            #   .<pending>[.<random>...]
            stream, consumer = tokens[4], tokens[5]
            numbers = tokens[6:11]
        else:
            return None
        delivered, sseq, cseq, ts, pending = (int(t) for t in numbers)
    except ValueError:
        return None
    if not stream or not consumer or min(delivered, sseq, cseq, ts, pending) < 0:
        return None
    return AckSubject(subject, stream, consumer, delivered, sseq, cseq, ts, pending)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AckTokens:
    """Issues and verifies ack tokens under one secret."""

    def __init__(self, secret: str | bytes = "") -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._key = secret or _PROCESS_SECRET
        #: True when the secret is this process's random one (tokens are replica-local).
        self.process_local = not secret

    def _mac(self, tenant_key: str, subject: str) -> bytes:
        msg = _VERSION + b"\0" + tenant_key.encode() + b"\0" + subject.encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, tenant_key: str, ack_subject: str) -> str:
        """A token for ``ack_subject``, usable only by the tenant with ``tenant_key``."""
        payload = _b64(tenant_key.encode() + b"\0" + ack_subject.encode())
        return _SEP.join((_VERSION.decode(), payload, _b64(self._mac(tenant_key, ack_subject))))

    def verify(self, token: str, tenant_key: str, field: str = "ack_token") -> AckSubject:
        """The delivery ``token`` stands for; refuses forged, foreign or malformed tokens."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidArgument(field, f"is longer than {MAX_TOKEN_CHARS} characters")
        parts = token.split(_SEP)
        if len(parts) != 3 or parts[0] != _VERSION.decode():
            raise InvalidArgument(field, "is not an ack token issued by this gateway")
        try:
            owner_raw, _, subject_raw = _unb64(parts[1]).partition(b"\0")
            owner, subject = owner_raw.decode(), subject_raw.decode()
            mac = _unb64(parts[2])
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise InvalidArgument(field, "is not an ack token issued by this gateway") from None
        if not hmac.compare_digest(mac, self._mac(owner, subject)):
            hint = (
                " (this gateway signs tokens with a per-process key: only the replica that "
                "delivered the message can act on them; set NATSGW_ACK_TOKEN_SECRET on every "
                "replica to share them)"
                if self.process_local
                else " (or it was signed with a different NATSGW_ACK_TOKEN_SECRET)"
            )
            raise InvalidArgument(field, "signature does not match: altered or forged" + hint)
        if not hmac.compare_digest(owner.encode(), tenant_key.encode()):
            raise PermissionDenied(f"{field}: this ack token belongs to another namespace")
        parsed = parse_ack_subject(subject)
        if parsed is None:  # cannot happen for tokens we issued; refuse rather than publish
            raise InvalidArgument(field, "does not name a JetStream delivery")
        return parsed
