from pathlib import Path

import pytest

from natsgw.config import MIB, ConfigError, Settings, SlowConsumerPolicy


def test_defaults_match_the_seed() -> None:
    s = Settings.from_env({})
    assert s.embedded and s.nats_urls == ()
    assert (s.grpc_host, s.grpc_port, s.service_name) == ("127.0.0.1", 50056, "nats-grpc-service")
    assert s.jetstream_enabled and s.max_message_size == 10 * MIB
    # NATS's convention (issue 12.4): a slow subscriber keeps its stream and loses what did not fit.
    assert s.slow_consumer_policy is SlowConsumerPolicy.DROP


def test_seed_variables_are_read() -> None:
    s = Settings.from_env(
        {
            "NATS_URLS": "nats://a:4222, nats://b:4222",
            "NATS_USERNAME": "u",
            "NATS_PASSWORD": "p",
            "NATS_JETSTREAM_ENABLED": "false",
            "GRPC_PORT": "6000",
            "GRPC_HOST": "0.0.0.0",
            "NATSGW_TRUSTED_ALLOW_REMOTE": "true",
            "LOKI_URL": "http://loki:3100/",
            "CONSUL_ENABLED": "true",
            "CONSUL_PORT": "8501",
            "NATSGW_DATA_DIR": "/data",
            "NATSGW_MAX_MESSAGE_SIZE": "16MiB",
            "NATSGW_SLOW_CONSUMER_POLICY": "close",
            "NATSGW_REQUEST_TIMEOUT": "2.5s",
        }
    )
    assert s.nats_urls == ("nats://a:4222", "nats://b:4222") and not s.embedded
    assert (s.nats_username, s.nats_password, s.jetstream_enabled) == ("u", "p", False)
    assert (s.grpc_port, s.grpc_host, s.loki_url) == (6000, "0.0.0.0", "http://loki:3100")
    assert s.consul_enabled and s.consul_port == 8501
    assert s.data_dir == Path("/data") and s.max_message_size == 16 * MIB
    assert s.slow_consumer_policy is SlowConsumerPolicy.CLOSE and s.request_timeout == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRPC_PORT", "http"),
        ("GRPC_PORT", "70000"),
        ("NATS_URLS", "localhost:4222"),
        ("NATS_JETSTREAM_ENABLED", "maybe"),
        ("NATSGW_MAX_MESSAGE_SIZE", "ten"),
        ("NATSGW_SLOW_CONSUMER_POLICY", "block"),
        ("NATSGW_REQUEST_TIMEOUT", "-1"),
        ("LOKI_URL", "loki:3100"),
        ("NATSGW_NAMESPACE_ROOT", "a.b"),
    ],
)
def test_malformed_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_secrets_never_appear_in_errors() -> None:
    with pytest.raises(ConfigError, match=r"NATSGW_ACK_TOKEN_SECRET=\*\*\*") as info:
        Settings.from_env({"NATSGW_ACK_TOKEN_SECRET": "short"})
    assert "short" not in str(info.value)


def test_settings_defaults_are_the_environment_defaults() -> None:
    """Settings() in code and an empty environment mean the same gateway (data_dir included)."""
    assert Settings() == Settings.from_env({})
    assert Settings().data_dir == Settings.from_env({}).data_dir != Path("natsgw-data")


def test_stream_buffer_is_never_smaller_than_the_largest_message() -> None:
    """Issue 9.5: a message the gateway accepts must fit a stream's buffer."""
    auto = Settings.from_env({"NATSGW_MAX_MESSAGE_SIZE": "20MiB"})
    assert auto.stream_buffer_bytes >= 20 * 1024 * 1024
    assert Settings.from_env({}).stream_buffer_bytes >= Settings().max_message_size
    with pytest.raises(
        ConfigError, match=r"NATSGW_SUBSCRIPTION_BUFFER_BYTES.*NATSGW_MAX_MESSAGE_SIZE"
    ):
        Settings.from_env(
            {"NATSGW_MAX_MESSAGE_SIZE": "10MiB", "NATSGW_SUBSCRIPTION_BUFFER_BYTES": "8MiB"}
        )
