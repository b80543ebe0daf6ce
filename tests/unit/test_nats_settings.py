"""Settings of task "nats" (issue 17 rows B, D): defaults, parsing, cross-checks."""

from __future__ import annotations

import pytest

from natsgw.config import MIB, ConfigError, Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.nats_read_window_bytes == 32 * MIB
    assert settings.nats_down_unhealthy_after == 45.0
    assert settings.consume_max_bytes == 16 * MIB
    assert settings.object_read_window_bytes == 4 * MIB


def test_parsed_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "NATSGW_NATS_READ_WINDOW_BYTES": "48MiB",
            "NATSGW_NATS_DOWN_UNHEALTHY_AFTER": "20s",
            "NATSGW_CONSUME_MAX_BYTES": "1MiB",
            "NATSGW_OBJECT_READ_WINDOW_BYTES": "8MiB",
        }
    )
    assert settings.nats_read_window_bytes == 48 * MIB
    assert settings.nats_down_unhealthy_after == 20.0
    assert settings.consume_max_bytes == MIB
    assert settings.object_read_window_bytes == 8 * MIB


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NATSGW_NATS_READ_WINDOW_BYTES": "512KiB"}, "NATSGW_NATS_READ_WINDOW_BYTES"),
        ({"NATSGW_OBJECT_READ_WINDOW_BYTES": "64MiB"}, "NATSGW_OBJECT_READ_WINDOW_BYTES"),
        ({"NATSGW_NATS_DOWN_UNHEALTHY_AFTER": "0"}, "NATSGW_NATS_DOWN_UNHEALTHY_AFTER"),
        ({"NATSGW_CONSUME_MAX_BYTES": "lots"}, "NATSGW_CONSUME_MAX_BYTES"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)
