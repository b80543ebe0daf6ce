"""Stateless ack tokens: a JetStream delivery handle any gateway replica can act on.

A JetStream delivery is acknowledged by publishing to its reply subject
(``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``, or the
longer form with domain and account hash). The gateway hands that subject to the client inside
an opaque token, signed over the tenant key and the subject, so that

- the client cannot forge or alter it (any change breaks the signature),
- a token belongs to exactly one tenant: presented by another, it is refused,
- any replica sharing ``NATSGW_ACK_TOKEN_SECRET`` can verify it without shared state.

Tokens are issued and verified on every delivery and every ack, so the format is built for that:
version 2 (``2~<base64url(mac || tenant \0 subject)>``) signs with keyed BLAKE2b (a MAC by its
design, one C call, ~4x cheaper than HMAC-SHA256) under a key derived from the secret. Version 1
tokens (``1~<payload>~<HMAC-SHA256>``, issued before the change) are still accepted, so nothing
handed out before an upgrade is refused; a replica not yet upgraded refuses version 2 tokens.

A token is accepted only in the exact spelling it was issued in (canonical base64url, no
padding): re-encodings that decode to the same bytes are refused as not ours.

Without that setting every process draws a random secret at import: tokens then work only on the
replica (process) that issued them. Pure module: no I/O, no NATS client.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import secrets
from typing import NamedTuple

from natsgw.errors import InvalidArgument, PermissionDenied

_V1 = "1"
_V2_PREFIX = "2~"
_MAC_BYTES = 16  # 128-bit MAC: ample against forgery
_PERSON = b"natsgw-ack-v2"  # BLAKE2b personalisation: these MACs mean nothing elsewhere
_PROCESS_SECRET = secrets.token_bytes(32)
#: Tokens longer than this are refused before any work (a NATS subject is at most a few KiB).
MAX_TOKEN_CHARS = 4096

_V1_TOKENS = 9
_V2_MIN_TOKENS = 11
#: base64url without padding, both ways (binascii + translate: the stdlib wrappers cost more).
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


class AckSubject(NamedTuple):
    """What a JetStream ack reply subject says about its delivery (a tuple: cheap to build)."""

    subject: str
    stream: str
    consumer: str
    num_delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    num_pending: int


def parse_ack_subject(subject: str) -> AckSubject | None:
    """Parse a ``$JS.ACK`` reply subject; None when it is not one (runs per delivery and ack)."""
    tokens = subject.split(".")
    count = len(tokens)
    if count == _V1_TOKENS:
        _, _, stream, consumer, delivered, sseq, cseq, ts, pending = tokens
    elif count >= _V2_MIN_TOKENS:
        # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>
        #   .<pending>[.<random>...]
        stream, consumer, delivered, sseq, cseq, ts, pending = tokens[4:11]
    else:
        return None
    if tokens[0] != "$JS" or tokens[1] != "ACK" or not stream or not consumer:
        return None
    # isdecimal: exactly the strings int() reads without sign, spaces or underscores.
    if not (
        delivered.isdecimal()
        and sseq.isdecimal()
        and cseq.isdecimal()
        and ts.isdecimal()
        and pending.isdecimal()
    ):
        return None
    return AckSubject(
        subject, stream, consumer, int(delivered), int(sseq), int(cseq), int(ts), int(pending)
    )


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """The bytes of ``text`` if it is their canonical base64url spelling (what :func:`_b64`
    writes); binascii.Error (or UnicodeEncodeError) on anything else.

    A decoder alone would also take padding, the standard ``+/`` alphabet and non-zero unused
    bits in the last character: several texts for one token. A token is a capability for one
    delivery, so exactly one spelling is accepted: the decoded bytes must encode back to it.
    """
    raw = text.encode("ascii")
    data = binascii.a2b_base64(
        raw.translate(_FROM_URLSAFE) + b"=" * (-len(raw) % 4), strict_mode=True
    )
    if binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != raw:
        raise binascii.Error("not the canonical base64url encoding")
    return data


def _not_ours(field: str) -> InvalidArgument:
    return InvalidArgument(field, "is not an ack token issued by this gateway")


class AckTokens:
    """Issues and verifies ack tokens under one secret."""

    def __init__(self, secret: str | bytes = "") -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._key = secret or _PROCESS_SECRET
        # BLAKE2b takes keys up to 64 bytes: derive one from a secret of any length. The keyed
        # state is made once and copied per token (keying costs as much as a short message).
        key2 = hashlib.blake2b(self._key, digest_size=32, person=b"natsgw-ack-key").digest()
        self._keyed = hashlib.blake2b(key=key2, digest_size=_MAC_BYTES, person=_PERSON)
        #: True when the secret is this process's random one (tokens are replica-local).
        self.process_local = not secret

    def _mac(self, body: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(body)
        return mac.digest()

    def _mac_v1(self, tenant_key: str, subject: str) -> bytes:
        msg = _V1.encode() + b"\0" + tenant_key.encode() + b"\0" + subject.encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, tenant_key: str, ack_subject: str) -> str:
        """A token for ``ack_subject``, usable only by the tenant with ``tenant_key``."""
        body = tenant_key.encode() + b"\0" + ack_subject.encode()
        return _V2_PREFIX + _b64(self._mac(body) + body)

    def verify(self, token: str, tenant_key: str, field: str = "ack_token") -> AckSubject:
        """The delivery ``token`` stands for; refuses forged, foreign or malformed tokens."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidArgument(field, f"is longer than {MAX_TOKEN_CHARS} characters")
        if token.startswith(_V2_PREFIX):
            try:
                raw = _unb64(token[2:])
            except (binascii.Error, ValueError):
                raise _not_ours(field) from None
            body = raw[_MAC_BYTES:]
            if len(raw) <= _MAC_BYTES or not hmac.compare_digest(raw[:_MAC_BYTES], self._mac(body)):
                raise self._forged(field)
            owner, _, subject_raw = body.partition(b"\0")
            try:
                subject = subject_raw.decode()
            except UnicodeDecodeError:  # signed by us, so never; refuse rather than guess
                raise _not_ours(field) from None
        else:
            owner, subject = self._verify_v1(token, field)
        if not hmac.compare_digest(owner, tenant_key.encode()):
            raise PermissionDenied(f"{field}: this ack token belongs to another namespace")
        parsed = parse_ack_subject(subject)
        if parsed is None:  # cannot happen for tokens we issued; refuse rather than publish
            raise InvalidArgument(field, "does not name a JetStream delivery")
        return parsed

    def _verify_v1(self, token: str, field: str) -> tuple[bytes, str]:
        """A version 1 token's owner and subject (tokens handed out before version 2)."""
        parts = token.split("~")
        if len(parts) != 3 or parts[0] != _V1:
            raise _not_ours(field)
        try:
            owner_raw, _, subject_raw = _unb64(parts[1]).partition(b"\0")
            owner, subject = owner_raw.decode(), subject_raw.decode()
            mac = _unb64(parts[2])
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise _not_ours(field) from None
        if not hmac.compare_digest(mac, self._mac_v1(owner, subject)):
            raise self._forged(field)
        return owner_raw, subject

    def _forged(self, field: str) -> InvalidArgument:
        hint = (
            " (this gateway signs tokens with a per-process key: only the replica that "
            "delivered the message can act on them; set NATSGW_ACK_TOKEN_SECRET on every "
            "replica to share them)"
            if self.process_local
            else " (or it was signed with a different NATSGW_ACK_TOKEN_SECRET)"
        )
        return InvalidArgument(field, "signature does not match: altered or forged" + hint)
