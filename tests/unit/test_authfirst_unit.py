"""The pieces behind issue 17 rows C, G and J, one by one: echoed values, the ids pre-scan,
the trusted precheck, id lengths, credential redaction in logs, traceback budget, settings."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest

from natsgw._generated import nats_service_pb2 as upb
from natsgw._generated.isa import nats as pb
from natsgw.auth.identity import TrustedAuthenticator, check_id_lengths
from natsgw.config import ConfigError, Settings
from natsgw.errors import (
    InvalidArgument,
    Unauthenticated,
    bounded_text,
    excerpt,
    to_grpc_error,
)
from natsgw.ops.logs import TracebackBudget, redact_credentials
from natsgw.server import build_codec

codec = build_codec(1024 * 1024)


def test_excerpt_quotes_short_values_whole_and_long_ones_by_a_prefix() -> None:
    assert excerpt("alice") == "'alice'"
    long = excerpt("x" * 10_000_000)
    assert long.startswith("'xxxx") and "10000000 characters" in long and len(long) < 90


def test_error_texts_never_carry_more_than_a_prefix_of_a_quoted_value() -> None:
    assert bounded_text("stream 'orders' not found") == "stream 'orders' not found"
    assert bounded_text("it's 'fine': the apostrophe opens nothing") == (
        "it's 'fine': the apostrophe opens nothing"
    )
    text = bounded_text(f"user_id {'u' * 5000!r} is not {'alice'!r}")
    assert len(text) < 120 and "'alice'" in text and "5000 characters" in text
    huge = to_grpc_error(InvalidArgument("subject", f"{'s' * 10_000_000!r} has a space"))
    assert len(huge.message or "") < 200


@pytest.mark.parametrize(
    ("request_", "cls"),
    [
        (
            upb.PublishRequest(
                user_id="alice", organization_id="acme", subject="s", data=b"d" * 99
            ),
            pb.PublishRequest,
        ),
        (upb.KVPutRequest(user_id="bob", bucket="b", key="k", value=b"v" * 300), pb.KvPutRequest),
    ],
)
def test_the_ids_prescan_reads_any_prefix_without_failing(request_: Any, cls: type) -> None:
    data = request_.SerializeToString()
    full = codec.ids_seen(data, cls)
    assert full["user_id"][1] == request_.user_id.encode()
    for cut in range(len(data)):
        seen = codec.ids_seen(data[:cut], cls)
        for name, (length, value) in seen.items():
            assert value is None or value == full[name][1]
            assert length == full[name][0]


def test_the_ids_prescan_finds_a_streamed_puts_ids_in_its_header() -> None:
    first = upb.ObjectPutStreamRequest(header=upb.ObjectPutHeader(user_id="carol", bucket="b"))
    assert codec.ids_seen(first.SerializeToString(), pb.ObjectPutStreamRequest) == {
        "user_id": (5, b"carol")
    }
    chunk = upb.ObjectPutStreamRequest(chunk=b"c" * 100)
    assert codec.ids_seen(chunk.SerializeToString(), pb.ObjectPutStreamRequest) == {}


def test_trusted_precheck_wants_a_bounded_user_id_among_the_first_bytes() -> None:
    TrustedAuthenticator.precheck({"user_id": (5, b"alice")}, 65536, 256)
    with pytest.raises(InvalidArgument, match="NATSGW_MAX_ID_LENGTH"):
        TrustedAuthenticator.precheck({"user_id": (10_000_000, None)}, 65536, 256)
    with pytest.raises(InvalidArgument, match="organization_id"):
        TrustedAuthenticator.precheck(
            {"user_id": (1, b"a"), "organization_id": (300, None)}, 65536, 256
        )
    with pytest.raises(Unauthenticated, match="NATSGW_TRUSTED_PREAUTH_BYTES"):
        TrustedAuthenticator.precheck({}, 65536, 256)
    with pytest.raises(Unauthenticated):
        TrustedAuthenticator.precheck({"user_id": (100, None)}, 65536, 256)  # cut off


def test_id_lengths_are_counted_in_utf8_bytes() -> None:
    check_id_lengths("a" * 256, "", 256)
    check_id_lengths("é" * 128, "", 256)  # 256 bytes
    with pytest.raises(InvalidArgument, match="user_id"):
        check_id_lengths("é" * 129, "", 256)
    with pytest.raises(InvalidArgument, match="organization_id"):
        check_id_lengths("a", "o" * 257, 256)


def test_log_lines_carry_no_credential() -> None:
    event = redact_credentials(
        None,
        "debug",
        {
            "event": "Decoded (b'authorization', b'Bearer s3cr3t-token'), total consumed 37",
            "authorization": "Bearer s3cr3t-token",
            "metadata": {"Authorization": "anything", "x-request-id": "r1"},
            "note": "Basic dXNlcjpwYXNzd29yZA== sent; the basic idea stays",
            "tokens": 3,
        },
    )
    assert "s3cr3t" not in repr(event) and "dXNlcjpw" not in repr(event)
    assert event["metadata"]["x-request-id"] == "r1"
    assert event["tokens"] == 3 and "the basic idea stays" in event["note"]


def _record(name: str, msg: str) -> logging.LogRecord:
    try:
        raise ValueError("bad header byte")
    except ValueError:
        exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, exc_info)


def test_library_tracebacks_are_let_through_once_a_minute_with_a_count() -> None:
    now = [0.0]
    budget = TracebackBudget(interval=60.0, clock=lambda: now[0])
    passed = [budget.filter(_record("grpclib.server", "Server error")) for _ in range(20)]
    assert passed.count(True) == 1
    assert budget.filter(_record("grpclib.server", "Application error"))  # another message
    assert budget.filter(_record("natsgw.pipeline", "handler_failed"))  # natsgw's own: all
    now[0] = 61.0
    later = _record("grpclib.server", "Server error")
    assert budget.filter(later) and later.suppressed == 19  # type: ignore[attr-defined]


def test_the_new_settings_read_their_variables_and_name_them_when_wrong() -> None:
    settings = Settings.from_env(
        {
            "NATSGW_REQUEST_READ_TIMEOUT": "2.5",
            "NATSGW_TRUSTED_PREAUTH_BYTES": "16KiB",
            "NATSGW_MAX_ID_LENGTH": "64",
        }
    )
    assert (settings.request_read_timeout, settings.trusted_preauth_bytes) == (2.5, 16 * 1024)
    assert settings.max_id_length == 64
    defaults = Settings.from_env({})
    assert (defaults.request_read_timeout, defaults.trusted_preauth_bytes) == (10.0, 64 * 1024)
    assert defaults.max_id_length == 256
    for name, value in (
        ("NATSGW_REQUEST_READ_TIMEOUT", "0"),
        ("NATSGW_TRUSTED_PREAUTH_BYTES", "100"),
        ("NATSGW_MAX_ID_LENGTH", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
