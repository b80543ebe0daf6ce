"""The embedded nats-server is supervised: restarted on its store, or natsgw gives up and says so.

Also: every line natsgw prints is in its configured log format, stdlib loggers' included.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from grpclib.client import Channel
from structlog.testing import capture_logs

from natsgw._generated.isa import nats as pb
from natsgw.config import Settings
from natsgw.server import Gateway
from tests.conftest import tenant, wait_for
from tests.integration._jetstream import make_stream, publish
from tests.integration.test_cli import NATSGW, free_port, run_env
from tests.integration.test_startup import wait_pid_gone


def embedded_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        grpc_host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        shutdown_grace=2.0,
    )


async def healthz(gw: Gateway) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gw.http_port}/healthz") as response,
    ):
        return response.status, await response.json()


async def test_killed_embedded_server_is_restarted_on_its_store(tmp_path: Path) -> None:
    gw = Gateway(embedded_settings(tmp_path))
    await gw.start()
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    try:
        await make_stream(stub, user, "orders", ["orders.>"])
        acked = [
            (await publish(stub, user, "orders", "orders.x", b"%d" % i)).sequence for i in (1, 2)
        ]
        await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="b", key="k", value=b"kv"))
        await stub.object_put(
            pb.ObjectPutRequest(user_id=user, bucket="o", object_name="n", data=b"obj" * 1000)
        )
        assert gw.embedded is not None and gw.adapter is not None
        first_pid = gw.embedded.pid
        with capture_logs() as logs:
            killed = time.monotonic()
            gw.embedded.kill()
            await wait_for(lambda: not gw.adapter.connected, 10)  # type: ignore[union-attr]
            await wait_for(lambda: gw.embedded.restarts == 1, 20)  # type: ignore[union-attr]
            await wait_for(lambda: gw.adapter.connected, 20)  # type: ignore[union-attr]
            recovered = time.monotonic() - killed
        print(f"\nembedded nats-server SIGKILLed: serving again after {recovered:.2f}s")
        assert gw.embedded.pid != first_pid
        (exited,) = [e for e in logs if e["event"] == "embedded_nats_exited"]
        assert exited["status"] == "killed by SIGKILL"
        assert "Server is ready" in exited["log_tail"]  # the tail of its own log
        assert exited["log_file"] == str(tmp_path / "data" / "nats-server.log")
        assert [e["event"] for e in logs].count("embedded_nats_restarting") == 1
        # Serving again, with everything stored before the crash intact.
        info = await stub.get_stream_info(
            pb.GetStreamInfoRequest(user_id=user, stream_name="orders")
        )
        assert info.stream is not None and info.stream.state is not None
        assert info.stream.state.last_seq == acked[-1] == 2
        assert (await publish(stub, user, "orders", "orders.x", b"3")).sequence == 3
        got = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="b", key="k"))
        assert got.found and got.value == b"kv"
        obj = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="o", object_name="n"))
        assert obj.found and obj.data == b"obj" * 1000
        assert (await healthz(gw))[0] == 200
        # Its log is in the data directory, with both runs in it.
        text = (tmp_path / "data" / "nats-server.log").read_text()
        assert text.count("Server is ready") == 2
    finally:
        channel.close()
        await gw.stop()
    assert gw.embedded is not None and not gw.embedded.running


async def test_gives_up_after_repeated_failures_and_healthz_says_so(tmp_path: Path) -> None:
    gw = Gateway(embedded_settings(tmp_path))
    await gw.start()
    try:
        assert gw.embedded is not None
        assert (await healthz(gw))[0] == 200
        gw.embedded.max_restarts = 0  # the next failure is one too many
        gw.embedded.kill()
        await wait_for(lambda: bool(gw.failure), 10)
        status, body = await healthz(gw)
        assert status == 503 and body["status"] == "failed"
        assert "failed 1 times" in body["reason"] and "nats-server.log" in body["reason"]
        assert not gw.embedded.running
    finally:
        await gw.stop()


def test_serve_exits_non_zero_when_its_nats_server_keeps_dying(tmp_path: Path) -> None:
    """A crash loop: killed six times within the window, natsgw stops with status 1."""
    proc = subprocess.Popen(
        [*NATSGW, "serve"],
        env=run_env(tmp_path, GRPC_PORT=str(free_port())),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    kills = 0
    try:
        for line in proc.stderr:
            lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event["event"] == "embedded_nats_started":
                pid = int(event["pid"])
                time.sleep(0.3)
                os.kill(pid, signal.SIGKILL)
                kills += 1
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, "".join(lines[-5:])
    assert kills == 6  # the first start and five restarts (max_restarts=5 in 60 s)
    plain = [line for line in lines if not line.startswith("{")]
    assert len(plain) == 1 and plain[0].startswith(
        "natsgw: stopped: the embedded nats-server failed"
    )
    events = [json.loads(line) for line in lines if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("embedded_nats_exited") == 6
    assert "embedded_nats_gave_up" in names and "natsgw_stopped" in names
    # nats-server's own warning about the default 10 MiB max_payload is in natsgw's log (at
    # info: natsgw chose that size, so it is not news on every start).
    assert any(
        e["event"] == "nats_server_log" and "discouraged" in e["line"] and e["level"] == "info"
        for e in events
    )
    assert wait_pid_gone(pid, 5)


def test_stdlib_and_warning_lines_use_the_configured_format(tmp_path: Path) -> None:
    """grpclib, nats-py and asyncio log through the stdlib: their lines are JSON too."""
    program = """
import logging, warnings
from natsgw.ops.logs import configure
configure("info", "json")
logging.getLogger("grpclib.health.check").warning(
    "Health check %r status changed to %r", print, False)
logging.getLogger("nats.aio.client").error("boom", exc_info=ValueError("x"))
warnings.warn("careful", UserWarning, stacklevel=1)
logging.getLogger("quiet").debug("below the level")
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(e["logger"], e["level"]) for e in events] == [
        ("grpclib.health.check", "warning"),
        ("nats.aio.client", "error"),
        ("py.warnings", "warning"),
    ]
    assert events[0]["event"].startswith("Health check <built-in function print> status changed")
    assert "ValueError" in events[1]["exception"]
    assert all("timestamp" in e for e in events)


async def test_restart_backoff_is_not_a_busy_loop(tmp_path: Path) -> None:
    """Restarts wait 0.2 s, 0.4 s, ...: supervision gives the store time, never spins."""
    gw = Gateway(embedded_settings(tmp_path))
    await gw.start()
    try:
        assert gw.embedded is not None
        with capture_logs() as logs:
            for expected in (1, 2):
                gw.embedded.kill()
                await wait_for(lambda n=expected: gw.embedded.restarts == n, 20)  # type: ignore[misc,union-attr]
        delays = [e["delay"] for e in logs if e["event"] == "embedded_nats_restarting"]
        assert delays == [0.2, 0.4]
        await asyncio.sleep(0)
    finally:
        await gw.stop()
