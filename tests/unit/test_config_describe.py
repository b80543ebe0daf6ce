"""check-config: variable names, plain values, secrets masked, typos found."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from natsgw import config
from natsgw.config import Settings, describe, unknown_variables, variable_name


def test_every_setting_maps_to_the_variable_from_env_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    original = config._Env.get

    def recording(self: Any, name: str, parse: Callable[[str], Any], default: Any) -> Any:
        read.append(name)
        return original(self, name, parse, default)

    monkeypatch.setattr(config._Env, "get", recording)
    Settings.from_env({})
    assert sorted(read) == sorted(variable_name(f) for f in Settings.__slots__)


def test_values_are_plain_and_secrets_masked() -> None:
    settings = Settings.from_env(
        {
            "NATS_URLS": "nats://a:4222,nats://bob:pw@b:4222",
            "NATS_PASSWORD": "hunter2",
            "NATSGW_ACK_TOKEN_SECRET": "s" * 20,
            "NATSGW_CONSUL_TOKEN": "consul-secret",
            "NATSGW_REQUEST_TIMEOUT": "2.5",
            "NATSGW_TRUSTED_ALLOW_REMOTE": "true",
            "LOKI_URL": "https://user:lokipass@loki:3100",
        }
    )
    shown = dict(describe(settings))
    assert shown["NATS_URLS"] == "nats://a:4222,nats://bob:***@b:4222"
    assert shown["NATS_PASSWORD"] == shown["NATSGW_ACK_TOKEN_SECRET"] == "***"
    assert shown["NATSGW_CONSUL_TOKEN"] == "***" and shown["NATS_TOKEN"] == ""
    assert shown["NATSGW_REQUEST_TIMEOUT"] == "2.5"
    assert shown["NATSGW_TRUSTED_ALLOW_REMOTE"] == "true"
    assert shown["NATSGW_SLOW_CONSUMER_POLICY"] == "drop"
    assert shown["NATSGW_JWT_ALGORITHMS"] == "RS256,ES256"
    assert shown["NATSGW_HTTP_PORT"] == "" and shown["GRPC_PORT"] == "50056"
    assert shown["LOKI_URL"] == "https://user:***@loki:3100"
    text = repr(shown)
    assert "hunter2" not in text and "lokipass" not in text and "consul-secret" not in text


def test_unknown_natsgw_variables_are_named_with_a_suggestion() -> None:
    env = {
        "NATSGW_LOG_FORMT": "json",
        "NATSGW_LOG_LEVEL": "info",
        "NATSGW_TARGET": "h:1",  # read by the client commands
        "NATSGW_WHATEVER": "1",
        "PATH": "/bin",
    }
    assert unknown_variables(env) == [
        ("NATSGW_LOG_FORMT", "NATSGW_LOG_FORMAT"),
        ("NATSGW_WHATEVER", None),
    ]


def test_check_config_command_prints_variables_and_warns(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "natsgw", "check-config"],
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "NATS_PASSWORD": "hunter2",
            "NATSGW_SUBSCRIPTON_BUFFER_MSGS": "5",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert "NATS_PASSWORD=***" in lines and "GRPC_PORT=50056" in lines
    assert all("=" in line and " " not in line.split("=", 1)[0] for line in lines)
    assert "hunter2" not in result.stdout
    assert "NATSGW_SUBSCRIPTON_BUFFER_MSGS" in result.stderr
    assert "NATSGW_SUBSCRIPTION_BUFFER_MSGS" in result.stderr
