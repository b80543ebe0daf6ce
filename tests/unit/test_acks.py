"""Stateless ack tokens and ack subject parsing (natsgw.tenancy.acks)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgw.errors import InvalidArgument, PermissionDenied
from natsgw.tenancy.acks import MAX_TOKEN_CHARS, AckTokens, parse_ack_subject

V1 = "$JS.ACK.natsgw-uAlice-orders.worker.2.17.9.1795833147091652016.4"
V2 = "$JS.ACK.hub.ACCHASH.natsgw-uAlice-orders.worker.2.17.9.1795833147091652016.4.rand"


def test_parses_v1_and_v2_ack_subjects() -> None:
    for subject in (V1, V2):
        ack = parse_ack_subject(subject)
        assert ack is not None
        assert (ack.stream, ack.consumer) == ("natsgw-uAlice-orders", "worker")
        assert (ack.num_delivered, ack.stream_seq, ack.consumer_seq) == (2, 17, 9)
        assert ack.timestamp_ns == 1795833147091652016
        assert ack.num_pending == 4
        assert ack.subject == subject


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "natsgw.uAlice.orders",
        "$JS.ACK.s.c.1.2.3",
        "$JS.ACK.s.c.x.2.3.4.5",
        "$JS.API.s.c.1.2.3.4.5",
        "$JS.ACK.s.c.1.2.3.4.5.6",  # ten tokens: neither form
        "$JS.ACK..c.1.2.3.4.5",
    ],
)
def test_rejects_what_is_not_an_ack_subject(subject: str) -> None:
    assert parse_ack_subject(subject) is None


def test_token_round_trip() -> None:
    tokens = AckTokens("s" * 32)
    token = tokens.issue("uAlice", V1)
    assert V1 not in token  # opaque (base64), not the raw subject
    assert tokens.verify(token, "uAlice").subject == V1


def test_another_tenants_token_is_permission_denied() -> None:
    tokens = AckTokens("s" * 32)
    token = tokens.issue("uAlice", V1)
    with pytest.raises(PermissionDenied):
        tokens.verify(token, "uBob")


def test_token_from_another_secret_is_refused_with_a_hint() -> None:
    token = AckTokens("one-secret-value-123").issue("uAlice", V1)
    with pytest.raises(InvalidArgument, match="NATSGW_ACK_TOKEN_SECRET"):
        AckTokens("another-secret-value").verify(token, "uAlice")


def test_process_secret_is_shared_within_the_process_only() -> None:
    a, b = AckTokens(), AckTokens()
    assert a.process_local
    assert b.verify(a.issue("uAlice", V1), "uAlice").stream_seq == 17
    with pytest.raises(InvalidArgument, match="per-process"):
        AckTokens().verify(AckTokens("x" * 16).issue("uAlice", V1), "uAlice")


@given(st.text(max_size=200))
def test_arbitrary_text_is_never_accepted(text: str) -> None:
    with pytest.raises((InvalidArgument, PermissionDenied)):
        AckTokens("s" * 32).verify(text, "uAlice")


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_breaks_the_token(position: int, replacement: int) -> None:
    tokens = AckTokens("s" * 32)
    token = tokens.issue("uAlice", V1)
    index = position % len(token)
    char = chr(ord("A") + replacement % 26)
    if token[index] == char:
        return
    altered = token[:index] + char + token[index + 1 :]
    # Even a change only in the last character's unused bits (same bytes) is refused.
    with pytest.raises((InvalidArgument, PermissionDenied)):
        tokens.verify(altered, "uAlice")


def test_oversized_token_refused_early() -> None:
    with pytest.raises(InvalidArgument, match="longer"):
        AckTokens("s" * 32).verify("1~" + "A" * MAX_TOKEN_CHARS, "uAlice")


def _v1_token(secret: bytes, tenant_key: str, subject: str) -> str:
    """A token in the format gateways issued before version 2 (HMAC-SHA256), built by hand."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = tenant_key.encode() + b"\0" + subject.encode()
    mac = hmac.new(secret, b"1\0" + payload, hashlib.sha256).digest()[:16]
    return f"1~{b64(payload)}~{b64(mac)}"


def test_tokens_issued_before_version_2_are_still_accepted() -> None:
    tokens = AckTokens("s" * 32)
    old = _v1_token(b"s" * 32, "uAlice", V1)
    assert tokens.verify(old, "uAlice").subject == V1
    assert tokens.issue("uAlice", V1).startswith("2~")
    with pytest.raises(PermissionDenied):
        tokens.verify(old, "uBob")
    with pytest.raises(InvalidArgument, match="signature"):
        AckTokens("another-secret-value").verify(old, "uAlice")
    forged = old[:-2] + ("AA" if not old.endswith("AA") else "BB")
    with pytest.raises(InvalidArgument):
        tokens.verify(forged, "uAlice")


def test_a_version_2_token_cannot_be_relabelled_for_another_tenant() -> None:
    tokens = AckTokens("s" * 32)
    raw = base64.urlsafe_b64decode(tokens.issue("uAlice", V1)[2:] + "==")
    swapped = raw[:16] + raw[16:].replace(b"uAlice", b"uBobby", 1)
    token = "2~" + base64.urlsafe_b64encode(swapped).rstrip(b"=").decode()
    with pytest.raises(InvalidArgument, match="signature"):
        tokens.verify(token, "uBobby")


def test_version_2_tokens_are_keyed_blake2b_as_specified() -> None:
    """Tokens handed out by earlier releases verify, and new ones are byte-identical to them:
    the MAC is still BLAKE2b keyed with the derived key (however the state is reused)."""
    secret = b"s" * 32
    key = hashlib.blake2b(secret, digest_size=32, person=b"natsgw-ack-key").digest()
    body = b"uAlice\0" + V1.encode()
    mac = hashlib.blake2b(body, key=key, digest_size=16, person=b"natsgw-ack-v2").digest()
    expected = "2~" + base64.urlsafe_b64encode(mac + body).rstrip(b"=").decode()
    tokens = AckTokens(secret)
    assert tokens.issue("uAlice", V1) == expected
    assert tokens.issue("uAlice", V1) == expected  # the keyed state is not consumed
    assert tokens.verify(expected, "uAlice").subject == V1


@pytest.mark.parametrize("count", ["+2", "2_0", "-2", " 2", "²"])
def test_ack_subject_numbers_are_plain_digits(count: str) -> None:
    assert parse_ack_subject(f"$JS.ACK.s.c.{count}.2.3.4.5") is None


_URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def reencodings(token: str) -> dict[str, str]:
    """Other spellings of ``token`` that decode to the same bytes (issue #17 row K): what an
    attacker gets for free when the decoder is lenient. Keyed by what was changed."""
    prefix, _, body = token.rpartition("~")
    prefix += "~"
    found = {"padded": prefix + body + "=" * (-len(body) % 4 or 4)}
    if "-" in body or "_" in body:  # the standard alphabet instead of base64url
        found["std alphabet"] = prefix + body.replace("-", "+").replace("_", "/")
    if len(body) % 4:  # the last character has unused low bits: set one
        last = _URLSAFE.index(body[-1])
        found["unused bits"] = prefix + body[:-1] + _URLSAFE[last + 1]
    found["newline"] = prefix + body[:8] + "\n" + body[8:]
    return found


def token_with_every_variant(tokens: AckTokens, tenant_key: str) -> tuple[str, str]:
    """An ack subject and its token whose encoding has a '-' or '_' and unused bits."""
    for seq in range(1, 10_000):
        subject = f"$JS.ACK.natsgw-uAlice-orders.worker.1.{seq}.{seq}.1795833147091652016.0"
        token = tokens.issue(tenant_key, subject)
        body = token[2:]
        if ("-" in body or "_" in body) and len(body) % 4:
            return subject, token
    raise AssertionError("no such token")


def test_only_the_canonical_encoding_of_a_token_is_accepted() -> None:
    tokens = AckTokens("s" * 32)
    subject, token = token_with_every_variant(tokens, "uAlice")
    assert tokens.verify(token, "uAlice").subject == subject
    variants = reencodings(token)
    assert set(variants) == {"padded", "std alphabet", "unused bits", "newline"}
    accepted = []
    for what, variant in variants.items():
        assert variant != token
        try:
            tokens.verify(variant, "uAlice")
        except InvalidArgument:
            continue
        accepted.append(what)
    print(f"\nre-encoded ack tokens accepted: {len(accepted)}/{len(variants)} {accepted}")
    assert accepted == []


def test_a_version_1_token_is_refused_when_re_encoded() -> None:
    tokens = AckTokens("s" * 32)
    old = _v1_token(b"s" * 32, "uAlice", V1)
    assert tokens.verify(old, "uAlice").subject == V1
    payload, _, mac = old[2:].partition("~")
    padded = "1~" + payload + "=" * (-len(payload) % 4 or 4) + "~" + mac
    for variant in (padded, *reencodings(old).values()):
        with pytest.raises(InvalidArgument):
            tokens.verify(variant, "uAlice")
