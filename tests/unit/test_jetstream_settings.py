"""The JetStream settings (NATSGW_ACK_TOKEN_SECRET, delivery memory, stats window, in-flight)."""

from __future__ import annotations

import pytest

from natsgw.config import ConfigError, Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.ack_token_secret == ""
    assert settings.delivery_memory_size == 100_000
    assert settings.delivery_memory_ttl == 3600.0
    assert settings.stream_stats_window == 60.0
    assert settings.stream_publish_inflight == 256


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            "NATSGW_ACK_TOKEN_SECRET": "0123456789abcdef-shared",
            "NATSGW_DELIVERY_MEMORY_SIZE": "10",
            "NATSGW_DELIVERY_MEMORY_TTL": "90s",
            "NATSGW_STREAM_STATS_WINDOW": "5",
            "NATSGW_STREAM_PUBLISH_INFLIGHT": "32",
        }
    )
    assert settings.ack_token_secret == "0123456789abcdef-shared"
    assert (settings.delivery_memory_size, settings.delivery_memory_ttl) == (10, 90.0)
    assert (settings.stream_stats_window, settings.stream_publish_inflight) == (5.0, 32)


def test_the_secret_is_never_printed() -> None:
    settings = Settings.from_env({"NATSGW_ACK_TOKEN_SECRET": "0123456789abcdef-shared"})
    assert "0123456789abcdef" not in repr(settings.ack_token_secret)
    assert "0123456789abcdef" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NATSGW_ACK_TOKEN_SECRET", "short"),
        ("NATSGW_DELIVERY_MEMORY_SIZE", "0"),
        ("NATSGW_DELIVERY_MEMORY_TTL", "-1"),
        ("NATSGW_STREAM_STATS_WINDOW", "soon"),
        ("NATSGW_STREAM_PUBLISH_INFLIGHT", "-4"),
    ],
)
def test_malformed_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
