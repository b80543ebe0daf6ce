"""Pure pieces of the Key-Value and Object Store support: key rules, patterns, digests, settings."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgw.adapter.kv import operation_of
from natsgw.adapter.objects import chunk_subject, format_digest, meta_subject, parse_digest
from natsgw.config import BucketStorageKind, ConfigError, Settings
from natsgw.errors import InvalidArgument
from natsgw.tenancy import check_kv_key, check_object_name, kv_watch_pattern

NATS_KEY_CHARS = "-/_=.abcXYZ019"


@pytest.mark.parametrize("key", ["a", "a.b", "A-Z_0=9/x", "deep.er.key", "=", "-"])
def test_valid_keys(key: str) -> None:
    check_kv_key(key)


@pytest.mark.parametrize(
    "key", ["", ".a", "a.", "a..b", "a b", "a*", "a>", "*", ">", "é", "a\0", "x" * 1025]
)
def test_invalid_keys_name_the_field_and_key(key: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_kv_key(key, "key")
    assert err.value.field == "key"
    if key and len(key) < 100:
        assert repr(key) in err.value.message


@given(st.text(alphabet=NATS_KEY_CHARS, min_size=1, max_size=50))
def test_key_rules_match_nats(key: str) -> None:
    """Accepted exactly when NATS's own rule accepts (and no empty token, which NATS refuses)."""
    nats_ok = not key.startswith(".") and not key.endswith(".") and ".." not in key
    try:
        check_kv_key(key)
        accepted = True
    except InvalidArgument:
        accepted = False
    assert accepted == nats_ok


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("", ">"), (">", ">"), ("*", "*"), ("a.*", "a.*"), ("a.*.c", "a.*.c"), ("a.>", "a.>")],
)
def test_watch_patterns(pattern: str, expected: str) -> None:
    assert kv_watch_pattern(pattern) == expected


@pytest.mark.parametrize("pattern", ["a.>.b", ">.a", "a*", "a.b*", ".a", "a.", "a..b", "a b"])
def test_bad_watch_patterns(pattern: str) -> None:
    with pytest.raises(InvalidArgument):
        kv_watch_pattern(pattern)


@pytest.mark.parametrize("name", ["a", "with space", "路径/ファイル", "*>", "x" * 1024])
def test_object_names(name: str) -> None:
    check_object_name(name)


@pytest.mark.parametrize("name", ["", "a\0b", "y" * 1025, "é" * 513])
def test_bad_object_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_object_name(name)
    assert err.value.field == "object_name"


@given(st.text(min_size=1, max_size=200).filter(lambda s: "\0" not in s))
def test_object_meta_subject_is_one_valid_token(name: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return
    subject = meta_subject("bucket", name)
    token = subject[len("$O.bucket.M.") :]
    assert subject.startswith("$O.bucket.M.")
    assert all(c.isalnum() or c in "-_=" for c in token)
    assert base64.urlsafe_b64decode(token).decode("utf-8") == name


def test_digest_format_round_trip() -> None:
    sha = hashlib.sha256(b"hello").digest()
    text = format_digest(sha)
    assert text.startswith("SHA-256=")
    assert parse_digest(text) == sha
    assert parse_digest(text.replace("SHA-256=", "sha-256=")) == sha
    assert parse_digest("MD5=abc") is None
    assert parse_digest("SHA-256=not base64!") is None
    assert parse_digest("SHA-256=" + base64.urlsafe_b64encode(b"short").decode()) is None
    assert chunk_subject("b", "NUID") == "$O.b.C.NUID"


@pytest.mark.parametrize(
    ("headers", "op"),
    [
        ({}, "PUT"),
        ({"KV-Operation": "DEL"}, "DEL"),
        ({"KV-Operation": "PURGE"}, "PURGE"),
        ({"Nats-Marker-Reason": "MaxAge"}, "PURGE"),
        ({"Nats-Marker-Reason": "Remove"}, "DEL"),
        ({"Other": "x"}, "PUT"),
    ],
)
def test_operation_of(headers: dict[str, str], op: str) -> None:
    assert operation_of(headers) == op


def test_kv_and_object_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "NATSGW_KV_HISTORY": "10",
            "NATSGW_KV_TTL": "90s",
            "NATSGW_KV_MAX_BYTES": "1MiB",
            "NATSGW_KV_STORAGE": "memory",
            "NATSGW_KV_REPLICAS": "3",
            "NATSGW_OBJECT_TTL": "0",
            "NATSGW_OBJECT_MAX_BYTES": "0",
            "NATSGW_OBJECT_STORAGE": "file",
            "NATSGW_OBJECT_REPLICAS": "1",
            "NATSGW_OBJECT_CHUNK_SIZE": "256KiB",
        }
    )
    assert s.kv_history == 10
    assert s.kv_ttl == 90.0
    assert s.kv_max_bytes == 1024 * 1024
    assert s.kv_storage is BucketStorageKind.MEMORY
    assert s.kv_replicas == 3
    assert s.object_ttl == 0.0
    assert s.object_max_bytes == 0
    assert s.object_chunk_size == 256 * 1024
    defaults = Settings.from_env({})
    assert defaults.kv_history == 5
    assert defaults.object_chunk_size == 512 * 1024


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NATSGW_KV_HISTORY", "0"),
        ("NATSGW_KV_HISTORY", "65"),
        ("NATSGW_KV_TTL", "-1"),
        ("NATSGW_KV_TTL", "soon"),
        ("NATSGW_KV_MAX_BYTES", "lots"),
        ("NATSGW_KV_STORAGE", "tape"),
        ("NATSGW_KV_REPLICAS", "6"),
        ("NATSGW_OBJECT_CHUNK_SIZE", "100"),
        ("NATSGW_OBJECT_CHUNK_SIZE", "9MiB"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value)
