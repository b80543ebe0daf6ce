"""Issue #17 row I: the embedded nats-server takes only natsgw's own generated credentials, and
its monitoring port stays closed unless asked for.

Before the fix any local process could connect to the embedded server without credentials and
read every tenant's data, and an HTTP monitoring port (/connz, /subsz: every tenant's subjects)
listened on loopback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import nats
import pytest
from grpclib.client import Channel
from structlog.testing import capture_logs

from natsgw._generated.isa import nats as pb
from natsgw.config import Settings
from natsgw.server import Gateway
from tests.conftest import tenant

pytestmark = pytest.mark.integration

CREDENTIALS = "nats-credentials.json"


def embedded_settings(data_dir: Path, **overrides: object) -> Settings:
    base = Settings(data_dir=data_dir, grpc_host="127.0.0.1", grpc_port=0, shutdown_grace=1.0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes matched with /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def refused(url: str) -> str:
    """The error an unauthenticated nats-py connect gets ('' when it was let in)."""
    try:
        client = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await client.close()
    return ""


async def published_through(gw: Gateway) -> bool:
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        user = tenant()
        put = await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="b", key="k", value=b"v"))
        got = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="b", key="k"))
        return put.success and got.found and got.value == b"v"
    finally:
        channel.close()


async def test_an_unauthenticated_client_is_refused_and_natsgw_connects(tmp_path: Path) -> None:
    gw = Gateway(embedded_settings(tmp_path / "data"))
    with capture_logs() as events:  # before any redaction: what natsgw hands its logger
        await gw.start()
    try:
        token = json.loads((tmp_path / "data" / CREDENTIALS).read_text())["token"]
        assert events and token not in repr(events)
        assert token not in repr(gw.embedded) + repr(gw.settings)
        assert "Plaintext" not in repr(events)  # a token: nats-server has nothing to warn about
        assert gw.embedded is not None and gw.adapter is not None
        plain = f"nats://127.0.0.1:{gw.embedded.port}"
        error = await refused(plain)
        print(f"\nunauthenticated connect to the embedded nats-server: {error or 'ACCEPTED'}")
        assert error, "an unauthenticated client was let into the embedded nats-server"
        assert "authorization" in error.lower() or "NoServers" in error
        assert await refused(f"nats://wrong-token-{'x' * 32}@127.0.0.1:{gw.embedded.port}")
        assert await refused(f"nats://natsgw:{token}@127.0.0.1:{gw.embedded.port}")
        assert gw.adapter.connected
        assert await published_through(gw)  # JetStream (KV) through natsgw works
    finally:
        await gw.stop()


async def test_credentials_are_private_and_reused_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gw = Gateway(embedded_settings(data))
    await gw.start()
    try:
        creds = data / CREDENTIALS
        assert creds.is_file(), sorted(p.name for p in data.iterdir())
        first = creds.read_text()
        for private in (creds, data / "nats-server.conf"):
            mode = stat.S_IMODE(private.stat().st_mode)
            print(f"\n{private.name}: mode {mode:o}")
            assert mode == 0o600, f"{private.name} is {mode:o}"
        token = json.loads(first)["token"]
        assert len(token) >= 32
        assert gw.embedded is not None and gw.embedded.pid is not None
        assert token.encode() not in cmdline(gw.embedded.pid)  # not visible in ps
        assert token not in (data / "nats-server.log").read_text()
        assert not [p.name for p in data.iterdir() if p.name.startswith(".")]  # no temp left
    finally:
        await gw.stop()
    again = Gateway(embedded_settings(data))
    await again.start()
    try:
        assert (data / CREDENTIALS).read_text() == first  # the same data dir keeps its creds
        assert again.adapter is not None and again.adapter.connected
        assert await published_through(again)
    finally:
        await again.stop()


async def test_no_monitoring_port_listens_unless_asked_for(tmp_path: Path) -> None:
    gw = Gateway(embedded_settings(tmp_path / "off"))
    await gw.start()
    try:
        assert gw.embedded is not None and gw.embedded.pid is not None
        ports = listening_ports(gw.embedded.pid)
        print(f"\nembedded nats-server listens on {len(ports)} port(s) by default")
        assert ports == {gw.embedded.port}, ports
        # What the monitor fed keeps answering: the caller's own figures are exact.
        channel = Channel("127.0.0.1", gw.port)
        try:
            stats = await pb.NatsServiceStub(channel).get_statistics(
                pb.GetStatisticsRequest(user_id=tenant())
            )
        finally:
            channel.close()
        assert stats.total_streams == 0 and stats.connections == 0
        assert gw.monitor is not None and not gw.monitor.configured
        assert await gw.monitor.varz() == {}  # server-wide counters read 0, no error
    finally:
        await gw.stop()

    on = Gateway(embedded_settings(tmp_path / "on", embedded_monitor=True))
    await on.start()
    try:
        assert on.embedded is not None and on.embedded.pid is not None
        ports = listening_ports(on.embedded.pid)
        assert len(ports) == 2 and on.embedded.port in ports, ports
        assert on.monitor is not None and on.monitor.configured  # natsgw reads it
        assert int((await on.monitor.varz())["connections"]) >= 1
    finally:
        await on.stop()
