"""nats-server's "<field> can not be updated" texts name the wire field (UpdateConsumer)."""

from __future__ import annotations

import pytest

from natsgw.adapter.consumer_control import refused_field


@pytest.mark.parametrize(
    ("description", "field"),
    [
        ("deliver policy can not be updated", "config.delivery_policy"),
        ("ack policy can not be updated", "config.ack_policy"),
        ("replay policy can not be updated", "config.replay_policy"),
        ("start sequence can not be updated", "config.opt_start_seq"),
        ("start time can not be updated", "config.opt_start_time"),
        ("something new can not be updated", "config"),
    ],
)
def test_refused_field(description: str, field: str) -> None:
    assert refused_field(description) == field
