"""`natsgw serve` start-up: one owner per data directory, and clean failures (exit status 2).

Real processes: the lock is a kernel flock, and "nothing left behind" is about child processes
and files, which only a separate process shows honestly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from natsgw.config import Settings
from natsgw.ops.datadir import DataDirLock
from natsgw.server import Gateway, StartupError
from tests.integration.test_cli import NATSGW, free_port, gone_within, run_env, start_serving


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) holds nothing any more.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_pid_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def serve_once(tmp_path: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `natsgw serve` to its end, with a private TMPDIR (to see what it leaves there)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [*NATSGW, "serve"],
        env=run_env(tmp_path, TMPDIR=str(tmp_path / "tmp"), **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """The lines that are not structured log events: what a person is meant to read."""
    lines = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    return lines


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    return stderr


# -- one owner per data directory ---------------------------------------------------------------


def test_second_gateway_on_the_same_data_dir_refuses_naming_dir_and_holder(
    tmp_path: Path, grpcio_stubs: tuple[Any, Any]
) -> None:
    pb2, pb2_grpc = grpcio_stubs
    port = free_port()
    first, _, _ = start_serving(tmp_path, port)
    try:
        second = serve_once(tmp_path, GRPC_PORT=str(free_port()))
        assert second.returncode == 2, second.stderr
        (line,) = error_lines(second.stderr)
        assert str(tmp_path / "data") in line
        assert f"pid={first.pid}" in line and socket.gethostname() in line
        # The refused process started no nats-server of its own: only the first one's runs.
        assert "embedded_nats_started" not in second.stderr
        # ... and the first still owns a working store.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.NATSServiceStub(channel)
            put = stub.KVPut(pb2.KVPutRequest(user_id="u", bucket="b", key="k", value=b"v"))
            assert put.success, put
    finally:
        assert "natsgw_stopped" in stop(first)
    assert first.returncode == 0


def test_lock_is_released_when_the_owner_is_killed(
    tmp_path: Path, grpcio_stubs: tuple[Any, Any]
) -> None:
    """SIGKILL leaves the lock file behind, but not the lock: a new natsgw takes over the store."""
    pb2, pb2_grpc = grpcio_stubs
    port = free_port()
    first, _, nats_pid = start_serving(tmp_path, port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb2_grpc.NATSServiceStub(channel)
        stub.KVPut(pb2.KVPutRequest(user_id="u", bucket="b", key="k", value=b"kept"))
    first.kill()
    first.wait(10)
    assert first.stderr is not None
    first.stderr.close()
    # Its nats-server is told to stop (PR_SET_PDEATHSIG) and shares the lock until it is gone.
    assert wait_pid_gone(nats_pid, 15), "the killed gateway's nats-server did not stop"
    assert (tmp_path / "data" / "natsgw.lock").exists()

    port = free_port()
    second, _, _ = start_serving(tmp_path, port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.NATSServiceStub(channel)
            got = stub.KVGet(pb2.KVGetRequest(user_id="u", bucket="b", key="k"), timeout=10)
            assert got.value == b"kept"
    finally:
        stop(second)
    assert second.returncode == 0


# -- clean start-up failures ----------------------------------------------------------------------


def test_grpc_port_in_use_is_one_line_status_2_and_nothing_left(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_once(tmp_path, GRPC_PORT=str(port))
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert f"127.0.0.1:{port}" in line and "in use" in line.lower(), line
    assert "Traceback" not in result.stderr
    # The embedded nats-server it had started is gone, and so is the lock.
    started = [json.loads(x) for x in result.stderr.splitlines() if "embedded_nats_started" in x]
    assert started, "the failure must come after the embedded server started, to test cleanup"
    assert not pid_alive(int(started[0]["pid"]))
    assert gone_within(int(started[0]["url"].rsplit(":", 1)[1]), 5)
    assert (tmp_path / "data" / "natsgw.lock").read_text() == ""  # released and cleared
    assert not list((tmp_path / "tmp").iterdir()), "temporary files were left behind"


def test_unreadable_tls_files_are_one_line_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    result = serve_once(
        tmp_path,
        GRPC_PORT=str(free_port()),
        NATSGW_TLS_CERT_FILE=str(bad),
        NATSGW_TLS_KEY_FILE=str(tmp_path / "missing-key.pem"),
    )
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert "NATSGW_TLS_CERT_FILE" in line and str(bad) in line
    assert "embedded_nats_started" not in result.stderr  # refused before anything started
    assert not (tmp_path / "data" / "nats-server.log").exists()


def test_unreachable_nats_urls_at_start_serves_unavailable_and_says_so(
    tmp_path: Path, grpcio_stubs: tuple[Any, Any]
) -> None:
    """Documented choice: natsgw waits (serves UNAVAILABLE, keeps connecting), in one clear line."""
    pb2, pb2_grpc = grpcio_stubs
    dead = free_port()
    port = free_port()
    proc = subprocess.Popen(
        [*NATSGW, "serve"],
        env=run_env(tmp_path, GRPC_PORT=str(port), NATS_URLS=f"nats://127.0.0.1:{dead}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    events = []
    for line in proc.stderr:
        events.append(json.loads(line))
        if events[-1]["event"] == "natsgw_started":
            break
    try:
        (warning,) = [e for e in events if e["event"] == "nats_unreachable_at_start"]
        assert warning["servers"] == [f"nats://127.0.0.1:{dead}"]
        assert "UNAVAILABLE" in warning["detail"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.NATSServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Publish(pb2.PublishRequest(user_id="u", subject="s", data=b"x"), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        stderr = stop(proc)
    assert proc.returncode == 0, stderr
    assert not children_of(proc.pid)


def test_embedded_nats_port_in_use_is_one_line_status_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        nats_port = taken.getsockname()[1]
        result = serve_once(
            tmp_path, GRPC_PORT=str(free_port()), NATSGW_EMBEDDED_NATS_PORT=str(nats_port)
        )
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("natsgw: cannot start: nats-server did not start")
    assert str(tmp_path / "data" / "nats-server.log") in line and "address already in use" in line
    assert (tmp_path / "data" / "natsgw.lock").read_text() == ""
    assert not list((tmp_path / "tmp").iterdir())


async def test_failed_start_stops_what_it_started_and_frees_the_data_dir(tmp_path: Path) -> None:
    """In process: the listener fails after the embedded server and the NATS connection are up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(
            data_dir=tmp_path / "data", grpc_port=taken.getsockname()[1], http_port=0
        )
        gw = Gateway(settings)
        with pytest.raises(StartupError, match="cannot listen for gRPC"):
            await gw.start()
    assert gw.embedded is not None and not gw.embedded.running
    assert gw.adapter is not None and not gw.adapter.connected
    assert gw.lock is None
    again = DataDirLock(tmp_path / "data")
    again.acquire()  # a second flock would fail, even from this process, had it not been released
    again.release()
