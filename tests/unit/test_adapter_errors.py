"""JetStream API refusals, as natsgw's own client receives them, become the right GatewayError."""

from __future__ import annotations

import pytest

from natsgw.adapter.errors import ApiError, NoStream, WrongLastSequence, as_gateway_error
from natsgw.adapter.jetstream import _publish_refused, parse_header_block
from natsgw.errors import (
    AlreadyExists,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": 404, "err_code": 10059, "description": "stream not found"}, NotFound),
        (
            {
                "code": 503,
                "err_code": 10008,
                "description": "JetStream system temporarily unavailable",
            },
            Unavailable,
        ),
        (
            {"code": 503, "err_code": 10077, "description": "maximum messages exceeded"},
            ResourceExhausted,
        ),
        (
            {
                "code": 400,
                "err_code": 10058,
                "description": "stream name already in use with a different configuration",
            },
            AlreadyExists,
        ),
        (
            {
                "code": 400,
                "err_code": 10052,
                "description": "replicas > 1 not supported in non-clustered mode",
            },
            InvalidArgument,
        ),
    ],
)
def test_api_errors_keep_their_meaning(
    error: dict[str, object], expected: type[GatewayError]
) -> None:
    translated = as_gateway_error("create stream", ApiError.of(error))
    assert type(translated) is expected
    assert str(error["description"]) in translated.message


def test_a_failed_expected_sequence_is_typed() -> None:
    refusal = _publish_refused(
        {"code": 400, "err_code": 10071, "description": "wrong last sequence: 7"}, "put k"
    )
    assert isinstance(refusal, WrongLastSequence)
    assert isinstance(refusal, FailedPrecondition)  # same status as before it had a type
    other = _publish_refused({"code": 503, "err_code": 0, "description": "x"}, "put k")
    assert isinstance(other, ApiError)
    assert issubclass(NoStream, NotFound)


def test_stored_header_blocks_are_read_like_nats_clients_read_them() -> None:
    block = b"NATS/1.0\r\nKV-Operation: DEL\r\nX-Url: http://a:1/b\r\n\r\n"
    assert parse_header_block(block) == {"KV-Operation": "DEL", "X-Url": "http://a:1/b"}
    assert parse_header_block(b"NATS/1.0\r\n\r\n") == {}
