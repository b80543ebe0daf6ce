"""The edge's pure parts: frame budgets, connection caps, its policy and settings, accept logs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from natsgw.config import ConfigError, Settings
from natsgw.edge.budget import RateBudget
from natsgw.edge.fds import AcceptErrorLog
from natsgw.edge.guard import FD_RESERVE, EdgePolicy
from natsgw.edge.limits import ConnectionLimits, peer_key


def test_budget_allows_its_rate_per_window_then_refuses_until_the_next() -> None:
    budget = RateBudget(3)
    assert [budget.take(10.0 + i * 0.1) for i in range(5)] == [True, True, True, False, False]
    assert budget.take(11.0)  # a new window
    assert RateBudget(0).take(0.0)  # 0: no limit
    assert all(RateBudget(0).take(float(i)) for i in range(10_000))


def test_limits_cap_per_peer_and_in_total_and_release() -> None:
    limits = ConnectionLimits(total=3, per_peer=2)
    assert limits.admit("a") is None
    assert limits.admit("a") is None
    assert limits.admit("a") == "too many connections from this address"
    assert limits.admit("b") is None
    assert limits.admit("c") == "too many connections to this gateway"
    limits.release("a")
    assert limits.from_peer("a") == 1
    assert limits.admit("c") is None
    for peer in ("a", "b", "c"):
        limits.release(peer)
    assert limits.open == 0 and limits.from_peer("a") == 0
    unlimited = ConnectionLimits(0, 0)
    assert all(unlimited.admit("x") is None for _ in range(1000))


def test_peer_key_is_the_address_without_the_port() -> None:
    assert peer_key(("127.0.0.2", 5555)) == "127.0.0.2"
    assert peer_key(("::1", 5555, 0, 0)) == "::1"
    assert peer_key(None) == ""


def test_policy_keeps_the_total_below_the_fd_limit() -> None:
    settings = Settings(edge_max_connections=4096)
    assert EdgePolicy.from_settings(settings, 1024).max_connections == 1024 - FD_RESERVE
    assert EdgePolicy.from_settings(settings, 1 << 20).max_connections == 4096
    assert EdgePolicy.from_settings(Settings(edge_max_connections=0), 1024).max_connections == (
        1024 - FD_RESERVE
    )
    assert EdgePolicy.from_settings(settings, 0).max_connections == 4096


def test_sweep_runs_often_enough_for_the_shortest_timeout() -> None:
    assert EdgePolicy().sweep_interval == 1.0
    assert EdgePolicy(handshake_timeout=1.0).sweep_interval == 0.25
    assert (
        EdgePolicy(handshake_timeout=0, idle_timeout=0, write_stall_timeout=0).sweep_interval == 1
    )


def test_edge_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "NATSGW_EDGE_MAX_CONNECTIONS": "100",
            "NATSGW_EDGE_MAX_CONNECTIONS_PER_PEER": "10",
            "NATSGW_EDGE_HANDSHAKE_TIMEOUT": "3s",
            "NATSGW_EDGE_IDLE_TIMEOUT": "0",
            "NATSGW_EDGE_RESETS_PER_SECOND": "50",
            "NATSGW_EDGE_PINGS_PER_SECOND": "0",
            "NATSGW_EDGE_SETTINGS_PER_SECOND": "5",
            "NATSGW_EDGE_OUTBOUND_BUFFER_BYTES": "4MiB",
            "NATSGW_EDGE_WRITE_STALL_TIMEOUT": "12",
        }
    )
    policy = EdgePolicy.from_settings(settings)
    assert policy == EdgePolicy(100, 10, 3.0, 0.0, 50, 0, 5, 4 * 1024 * 1024, 12.0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NATSGW_EDGE_MAX_CONNECTIONS_PER_PEER": "-1"}, "NATSGW_EDGE_MAX_CONNECTIONS_PER_PEER"),
        ({"NATSGW_EDGE_IDLE_TIMEOUT": "soon"}, "NATSGW_EDGE_IDLE_TIMEOUT"),
        (
            {"NATSGW_EDGE_MAX_CONNECTIONS": "10", "NATSGW_EDGE_MAX_CONNECTIONS_PER_PEER": "20"},
            "NATSGW_EDGE_MAX_CONNECTIONS_PER_PEER=20",
        ),
        ({"NATSGW_EDGE_OUTBOUND_BUFFER_BYTES": "64KiB"}, "NATSGW_EDGE_OUTBOUND_BUFFER_BYTES"),
    ],
)
def test_bad_edge_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


async def test_accept_errors_are_logged_once_per_interval_and_the_rest_passed_on() -> None:
    loop = asyncio.get_running_loop()
    passed: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: passed.append(context))
    accept_log = AcceptErrorLog(loop, interval=60.0)
    accept_log.install()
    try:
        with structlog.testing.capture_logs() as logged:
            for _ in range(1000):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    }
                )
            loop.call_exception_handler({"message": "something else"})
    finally:
        accept_log.uninstall()
        loop.set_exception_handler(previous)
    assert [e["event"] for e in logged] == ["accept_failed"]
    assert accept_log.seen == 1000 and accept_log.suppressed == 999
    assert [c["message"] for c in passed] == ["something else"]
