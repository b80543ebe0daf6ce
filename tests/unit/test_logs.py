"""Log format selection: console on a terminal (with a quiet audit trail), JSON otherwise."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from natsgw.config import ConfigError, Settings
from natsgw.ops.logs import configure


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def emit_sample() -> None:
    log = structlog.get_logger("natsgw.test")
    log.info("natsgw_started", port=50056)
    log.info("audit", rpc="Publish", outcome="ok", status="OK", peer="127.0.0.1:1", tenant="u:a")
    log.info(
        "audit",
        rpc="CreateStream",
        outcome="refused",
        status="INVALID_ARGUMENT",
        reason="subjects: at least one is required",
        peer="127.0.0.1:1",
        request_id="abc123",
        tenant="user:alice",
    )


def test_auto_is_console_on_a_terminal_and_the_audit_trail_is_quiet() -> None:
    out = Terminal()
    assert configure("info", "auto", out) == "console"
    emit_sample()
    text = out.getvalue()
    assert "natsgw_started" in text and not text.lstrip().startswith("{")
    assert "Publish" not in text  # a successful call's audit event stays off the terminal
    assert "audit refused" in text and "subjects: at least one is required" in text
    assert "request_id" not in text and "peer" not in text


def test_debug_shows_successful_audit_events_on_the_console() -> None:
    out = Terminal()
    configure("debug", "auto", out)
    emit_sample()
    assert "audit ok" in out.getvalue() and "Publish" in out.getvalue()


def test_auto_is_json_when_not_a_terminal_with_every_audit_field() -> None:
    out = io.StringIO()
    assert configure("info", "auto", out) == "json"
    emit_sample()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["natsgw_started", "audit", "audit"]
    assert events[2]["request_id"] == "abc123" and events[1]["peer"] == "127.0.0.1:1"


def test_the_setting_overrides_the_terminal_check() -> None:
    out = Terminal()
    assert configure("info", "json", out) == "json"
    emit_sample()
    assert all(json.loads(line) for line in out.getvalue().splitlines())
    assert Settings.from_env({"NATSGW_LOG_FORMAT": "console"}).log_format == "console"
    assert Settings.from_env({}).log_format == "auto"
    with pytest.raises(ConfigError, match="NATSGW_LOG_FORMAT"):
        Settings.from_env({"NATSGW_LOG_FORMAT": "yaml"})
