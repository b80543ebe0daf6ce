"""`natsgw serve` as operators run it: the embedded default, signals, configuration errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

NATSGW = [sys.executable, "-m", "natsgw"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSGW_", "GRPC_"))}
    return env | {"NATSGW_DATA_DIR": str(tmp_path / "data"), "NATSGW_LOG_FORMAT": "json"} | extra


def test_serve_without_nats_urls_runs_an_embedded_server_and_stops_cleanly(
    tmp_path: Path, grpcio_stubs: tuple[Any, Any]
) -> None:
    pb2, pb2_grpc = grpcio_stubs
    port = free_port()
    proc = subprocess.Popen(
        [*NATSGW, "serve"],
        env=run_env(tmp_path, GRPC_PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb2_grpc.NATSServiceStub(channel)
        health = stub.HealthCheck(pb2.NATSHealthCheckRequest(deep_check=True), timeout=10)
        assert health.healthy and health.jetstream_enabled, health.message
        published = stub.Publish(pb2.PublishRequest(user_id="u1", subject="hello", data=b"x"))
        assert published.success
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "embedded_nats_started" in stderr
    assert "natsgw_stopped" in stderr
    assert (tmp_path / "data" / "jetstream").is_dir()  # JetStream kept its data there
    # The embedded nats-server went away with the gateway.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path) not in ps.stdout


def test_malformed_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [*NATSGW, "serve"],
        env=run_env(tmp_path, GRPC_PORT="fifty"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "GRPC_PORT" in result.stderr and "fifty" in result.stderr
    assert time.monotonic() - started < 20


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    result = subprocess.run(
        [*NATSGW, "check-config"],
        env=run_env(tmp_path, NATS_URLS="nats://example:4222", NATS_PASSWORD="hunter2"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "nats://example:4222" in result.stdout
    assert "hunter2" not in result.stdout


def test_unreadable_tokens_file_stops_start_up_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [*NATSGW, "serve"],
        env=run_env(
            tmp_path,
            NATSGW_AUTH_MODE="token",
            NATSGW_AUTH_TOKENS_FILE=str(tmp_path / "missing.json"),
            GRPC_PORT=str(free_port()),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "missing.json" in result.stderr
    assert "Traceback" not in result.stderr
