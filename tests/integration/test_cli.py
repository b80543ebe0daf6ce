"""`natsgw serve` as operators run it: the embedded default, signals, configuration errors."""

from __future__ import annotations

import json
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


def start_serving(
    tmp_path: Path, port: int, **popen: Any
) -> tuple[subprocess.Popen[str], int, int]:
    """Start `natsgw serve`; once it serves, return it and its embedded server's port and pid."""
    proc = subprocess.Popen(
        [*NATSGW, "serve"],
        env=run_env(tmp_path, GRPC_PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    assert proc.stderr is not None
    nats_port = nats_pid = 0
    for line in proc.stderr:
        event = json.loads(line)
        if event["event"] == "embedded_nats_started":
            nats_port = int(event["url"].rsplit(":", 1)[1])
            nats_pid = int(event["pid"])
        if event["event"] == "natsgw_started":
            break
    assert nats_port, "no embedded nats-server was started"
    return proc, nats_port, nats_pid


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def gone_within(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while listening(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSGW_", "GRPC_"))}
    return env | {"NATSGW_DATA_DIR": str(tmp_path / "data"), "NATSGW_LOG_FORMAT": "json"} | extra


def test_serve_without_nats_urls_runs_an_embedded_server_and_stops_cleanly(
    tmp_path: Path, grpcio_stubs: tuple[Any, Any]
) -> None:
    pb2, pb2_grpc = grpcio_stubs
    port = free_port()
    proc, nats_port, _ = start_serving(tmp_path, port)
    try:
        assert listening(nats_port)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
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
    assert "natsgw_stopped" in stderr
    assert "nats_drain_failed" not in stderr
    assert (tmp_path / "data" / "jetstream").is_dir()  # JetStream kept its data there
    assert gone_within(nats_port, 5), "the embedded nats-server outlived the gateway"


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


def test_embedded_server_outlives_a_terminal_ctrl_c_until_natsgw_has_drained(
    tmp_path: Path,
) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C) must not cut NATS from under the
    drain; and natsgw killed outright takes its embedded server with it."""
    proc, nats_port, nats_pid = start_serving(tmp_path, free_port(), start_new_session=True)
    # The decisive fact: the server is outside natsgw's session, so no terminal signal reaches
    # it (whether a drain then fails is a race, so that check below is only a second line).
    assert os.getsid(nats_pid) != os.getsid(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "nats_drain_failed" not in stderr
    assert gone_within(nats_port, 5)

    proc, nats_port, _ = start_serving(tmp_path, free_port())
    proc.kill()
    proc.wait(timeout=10)
    assert gone_within(nats_port, 10), "embedded nats-server outlived a killed natsgw"
