"""The client's own retry table and rules, and the small pure helpers of the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from natsgw.client import InvalidArgument, parse_target
from natsgw.client._retry import (
    CONDITIONAL_KV_DELETE,
    IDEMPOTENT,
    NEVER,
    STREAM,
    UNARY,
    Retry,
    retryable,
)
from natsgw.client.cli import UsageError, size, token_of
from natsgw.client.errors import DeadlineExceeded, Unavailable
from natsgw.pipeline.policy import POLICIES


def test_the_clients_idempotency_table_agrees_with_the_gateways() -> None:
    server = {policy.rpc for policy in POLICIES.values() if policy.idempotent}
    assert server == IDEMPOTENT


def test_only_idempotent_rpcs_or_unsent_requests_are_retried() -> None:
    lost = Unavailable("connection to the gateway failed: Connection lost")
    refused = Unavailable("connection to the gateway failed: refused", sent=False)
    assert retryable("KVGet", lost) and retryable("ObjectPut", lost)
    assert not retryable("Publish", lost) and not retryable("PublishToStream", lost)
    assert retryable("Publish", refused)  # never left this process: safe to send
    assert not retryable("KVGet", DeadlineExceeded("late"))  # the caller's budget
    # A conditional delete's repeat after a success would answer FAILED_PRECONDITION.
    assert retryable("KVDelete", lost) and not retryable(CONDITIONAL_KV_DELETE, lost)
    assert retryable(CONDITIONAL_KV_DELETE, refused)


def test_backoff_is_bounded_and_grows() -> None:
    delays = list(UNARY.delays())
    assert len(delays) == UNARY.attempts - 1
    assert delays == sorted(delays) and delays[0] >= 0.1
    assert sum(delays) < 3.0
    stream = list(STREAM.delays())
    assert max(stream) <= STREAM.max_delay * 1.2 and 5 < sum(stream) < 15
    assert list(NEVER.delays()) == []
    assert list(Retry(attempts=3, first_delay=1, max_delay=1).delays())[1] <= 1.2


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("50056", ("127.0.0.1", 50056)),
        (":7000", ("127.0.0.1", 7000)),
        ("gw.example", ("gw.example", 50056)),
        ("gw.example:443", ("gw.example", 443)),
        ("[::1]:9", ("::1", 9)),
    ],
)
def test_a_bare_port_means_this_machine(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected


def test_bad_targets_say_what_is_expected() -> None:
    with pytest.raises(InvalidArgument, match="host:port"):
        parse_target("gw:http")
    with pytest.raises(InvalidArgument, match="1-65535"):
        parse_target("70000")


def test_human_sizes() -> None:
    assert [size(n) for n in (0, 1023, 1024, 1536, 5 * 1024**2, 3 * 1024**4)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 TiB",
    ]


def _args(token: str | None = None, token_file: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(token=token, token_file=token_file)


def test_the_token_comes_from_flag_file_or_environment_and_the_flag_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert token_of(_args(token_file=str(path)), {"NATSGW_TOKEN": "env"}) == "from-file"
    assert token_of(_args(), {"NATSGW_TOKEN": "env"}) == "env"
    assert token_of(_args(), {"NATSGW_TOKEN_FILE": str(path)}) == "from-file"
    assert token_of(_args(), {}) == ""
    assert capsys.readouterr().err == ""
    assert token_of(_args(token="flag"), {"NATSGW_TOKEN": "env"}) == "flag"
    warning = capsys.readouterr().err
    assert "visible" in warning and "NATSGW_TOKEN" in warning and "--token-file" in warning
    assert "flag" not in warning  # the token itself is never printed
    with pytest.raises(UsageError, match="NATSGW_TOKEN_FILE"):
        token_of(_args(), {"NATSGW_TOKEN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(UsageError, match="empty"):
        token_of(_args(token_file=str(tmp_path / "empty")), {})


def test_the_gateway_does_not_call_the_clients_variables_unknown() -> None:
    from natsgw.client.cli import CLIENT_VARIABLES
    from natsgw.config import CLIENT_VARIABLES as KNOWN_TO_THE_GATEWAY
    from natsgw.config import unknown_variables

    assert set(CLIENT_VARIABLES) <= KNOWN_TO_THE_GATEWAY
    assert list(unknown_variables(dict.fromkeys(CLIENT_VARIABLES, "x"))) == []
