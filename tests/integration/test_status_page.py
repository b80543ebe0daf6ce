"""The operators' view: per-tenant metrics of bounded cardinality and the /status page.

The page is checked in a real headless browser (Debian's chromium-headless-shell): the rows are
filled by the page's own JavaScript from /status.json, so a browser is the only honest reader.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from grpclib.client import Channel
from prometheus_client.parser import text_string_to_metric_families

from natsgw._generated.isa import nats as pb
from natsgw.adapter.types import ConsumerDetails, StreamDetails
from natsgw.ops.status import StatusPage
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import GatewayFactory, tenant
from tests.integration._jetstream import make_consumer, make_stream, publish


async def _get(gw: Gateway, path: str) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{gw.http_port}{path}") as answer,
    ):
        return answer.status, dict(answer.headers), await answer.text()


async def _status(gw: Gateway) -> dict[str, Any]:
    code, _, body = await _get(gw, "/status.json")
    assert code == 200
    found: dict[str, Any] = json.loads(body)
    return found


def _tenant_samples(exposition: str, family: str) -> dict[str, float]:
    for metric in text_string_to_metric_families(exposition):
        if metric.name == family:
            return {
                s.labels["tenant"]: s.value for s in metric.samples if s.name.endswith("_total")
            }
    return {}


async def _calls(stub: pb.NatsServiceStub, user: str, count: int) -> None:
    for _ in range(count):
        await stub.publish(pb.PublishRequest(user_id=user, subject="s", data=b"12345"))


async def test_tenants_shown_are_bounded_and_named_only_when_asked(
    make_gateway: GatewayFactory,
) -> None:
    listed, busiest, busy, quiet1, quiet2 = (tenant(p) for p in ("listed", "a", "b", "c", "d"))
    gw = await make_gateway(http_port=0, metrics_tenants_top=2, metrics_tenants=(f"user:{listed}",))
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        await _calls(stub, listed, 1)
        await _calls(stub, busiest, 12)
        await _calls(stub, busy, 6)
        await _calls(stub, quiet1, 2)
        await _calls(stub, quiet2, 3)
        # The busiest tenant's stream has a consumer 4 messages behind: its lag.
        await make_stream(stub, busiest, "lagstream7", ["lag"])
        await make_consumer(stub, busiest, "lagstream7", "slowreader7")
        for _ in range(4):
            await publish(stub, busiest, "lagstream7", "lag", b"z")
    finally:
        channel.close()

    status = await _status(gw)
    rows = {row["tenant"]: row for row in status["tenants"]}
    assert len(rows) == 3  # the listed one and the 2 busiest; everyone else is "other"
    assert rows[f"user:{listed}"]["calls"] == 1  # listed: named, the operator asked for it
    pseudonyms = [name for name in rows if name != f"user:{listed}"]
    assert all(name.startswith("t-") for name in pseudonyms)
    by_calls = sorted(rows.values(), key=lambda row: -row["calls"])
    top = by_calls[0]
    assert (top["calls"], top["published"], top["published_bytes"]) == (12 + 2 + 4, 16, 64)
    assert (top["streams"], top["consumers"], top["consumer_pending"]) == (1, 1, 4)
    assert by_calls[1]["calls"] == 6
    assert status["other"]["calls"] == 2 + 3
    assert status["tenant_names"] is False
    assert status["nats"]["connected"] is True and status["nats"]["state"] == "CONNECTED"
    text = json.dumps(status)
    for hidden in (busiest, busy, quiet1, quiet2, "lagstream7", "slowreader7"):
        assert hidden not in text  # no tenant, stream or consumer name on the open port

    _, _, exposition = await _get(gw, "/metrics")
    calls = _tenant_samples(exposition, "natsgw_tenant_calls")
    assert set(calls) == {*rows, "other"}  # 4 series however many tenants call
    assert calls["other"] == 5
    assert calls[f"user:{listed}"] == 1
    published = _tenant_samples(exposition, "natsgw_tenant_published_bytes")
    assert published[top["tenant"]] == 64
    for hidden in (busiest, busy, quiet1, quiet2):
        assert hidden not in exposition


async def test_names_are_shown_when_opted_in(make_gateway: GatewayFactory) -> None:
    user = tenant()
    gw = await make_gateway(http_port=0, status_tenant_names=True)
    channel = Channel("127.0.0.1", gw.port)
    try:
        await _calls(pb.NatsServiceStub(channel), user, 2)
    finally:
        channel.close()
    status = await _status(gw)
    assert status["tenant_names"] is True
    assert [(row["tenant"], row["calls"]) for row in status["tenants"]] == [(f"user:{user}", 2)]
    _, _, exposition = await _get(gw, "/metrics")
    assert _tenant_samples(exposition, "natsgw_tenant_calls")[f"user:{user}"] == 2


async def test_the_status_page_is_read_only(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(http_port=0)
    code, headers, body = await _get(gw, "/status")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]  # no inline script runs
    assert '<script src="/status.js"' in body
    for path in ("/status.js", "/status.css"):
        assert (await _get(gw, path))[0] == 200
    async with aiohttp.ClientSession() as session:
        for method in ("POST", "PUT", "DELETE"):
            async with session.request(
                method, f"http://127.0.0.1:{gw.http_port}/status.json"
            ) as answer:
                assert answer.status == 405


def _browser() -> list[str] | None:
    """A headless browser command, or None (CI=true: the test must not skip)."""
    shell = shutil.which("chromium-headless-shell")
    if shell is not None:
        return [shell]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found is not None:
            return [found, "--headless"]
    return None


async def test_the_page_shows_tenant_rows_in_a_real_browser(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    browser = _browser()
    if browser is None:
        message = "no headless browser: apt-get install chromium-headless-shell"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the status page must be checked in a browser)")
        pytest.skip(message)
    user = tenant()
    gw = await make_gateway(http_port=0, status_tenant_names=True)
    channel = Channel("127.0.0.1", gw.port)
    try:
        await _calls(pb.NatsServiceStub(channel), user, 3)
    finally:
        channel.close()
    proc = await asyncio.create_subprocess_exec(
        *browser,
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=3000",
        "--dump-dom",
        f"http://127.0.0.1:{gw.http_port}/status",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        dom, errors = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    page = dom.decode()
    assert proc.returncode == 0, errors.decode()[-2000:]
    # Filled by status.js from /status.json: the tenant's row, its calls and published bytes.
    row = f'<tr class="tenant" data-tenant="user:{user}"><td>user:{user}</td><td>3</td>'
    assert row in page, page[-3000:]
    assert "<td>15 B</td>" in page
    assert '<tr class="other" data-tenant="other">' in page
    assert "<dt>connected</dt><dd>true</dd>" in page
    assert 'id="updated">as of ' in page


_STALLED = Path(__file__).with_name("_stalled_client.py")


async def test_a_slow_readers_drops_and_open_streams_are_its_tenants(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    """A reader that never reads: its stream's drops show on its tenant's row, and stay there
    after the stream ended; its open stream shows while it is open."""
    reader, neighbour = tenant("reader"), tenant("neighbour")
    gw = await make_gateway(
        http_port=0, status_tenant_names=True, subscription_buffer_msgs=8, max_message_size=65536
    )

    async def row_of(user: str) -> dict[str, Any]:
        rows = {row["tenant"]: row for row in (await _status(gw))["tenants"]}
        found: dict[str, Any] = rows[f"user:{user}"]
        return found

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(_STALLED),
        str(gw.port),
        "Subscribe",
        reader,
        "slow",
        "1",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
        channel = Channel("127.0.0.1", gw.port)
        try:
            await _calls(pb.NatsServiceStub(channel), neighbour, 1)
        finally:
            channel.close()
        subject = Namespace(Tenant.user(reader)).subject("slow")
        for _ in range(400):  # far more than its HTTP/2 window and 8 buffered messages
            await nc.publish(subject, b"d" * 32768)
        await nc.flush()

        deadline = asyncio.get_running_loop().time() + 10
        while (await row_of(reader))["dropped"] == 0:
            assert asyncio.get_running_loop().time() < deadline, "no drops counted"
            await asyncio.sleep(0.05)
        open_row = await row_of(reader)
        assert open_row["open_streams"] == 1
        assert (await row_of(neighbour))["dropped"] == 0
    finally:
        proc.kill()
        await proc.wait()
    deadline = asyncio.get_running_loop().time() + 10
    while (closed := await row_of(reader))["open_streams"] != 0:
        assert asyncio.get_running_loop().time() < deadline, "the stream did not end"
        await asyncio.sleep(0.05)
    assert closed["dropped"] >= open_row["dropped"]  # a closed stream's drops stay counted
    status = await _status(gw)
    assert status["nats"]["slow_consumer_drops"] >= closed["dropped"]


def _page(gw: Gateway) -> StatusPage:
    assert gw.http is not None and gw.http.status is not None
    return gw.http.status


async def test_jetstream_is_read_once_per_ttl_and_a_vanished_stream_names_nothing(
    make_gateway: GatewayFactory,
) -> None:
    """A stream deleted between the listing and its consumers' listing costs only its own lag
    (the note names nothing: with names off no stream may appear), and a tenant new to the shown
    rows does not make the page ask NATS again before the TTL is over."""
    owner, newcomer = tenant("owner"), tenant("newcomer")
    gw = await make_gateway(http_port=0)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    page = _page(gw)
    js = page.jetstream
    assert js is not None
    listings: list[str] = []
    real_list_streams, real_list_consumers = js.list_streams, js.list_consumers
    doomed = Namespace(Tenant.user(owner)).stream("gonestream3")

    async def counted(subject_filter: str = "") -> list[StreamDetails]:
        listings.append(subject_filter)
        return await real_list_streams(subject_filter)

    async def racing(stream: str) -> list[ConsumerDetails]:
        if stream == doomed:  # deleted for real, right after it was listed
            await stub.delete_stream(
                pb.DeleteStreamRequest(user_id=owner, stream_name="gonestream3")
            )
        return await real_list_consumers(stream)

    try:
        for name in ("gonestream3", "keptstream3"):
            await make_stream(stub, owner, name, [f"{name}.x"])
            await make_consumer(stub, owner, name, "laggard3")
            for _ in range(3):
                await publish(stub, owner, name, f"{name}.x", b"z")
        js.list_streams = counted  # type: ignore[method-assign]
        js.list_consumers = racing  # type: ignore[method-assign]
        first = await page.snapshot()
        text = json.dumps(first)
        for hidden in (owner, "gonestream3", "keptstream3", "laggard3"):
            assert hidden not in text, first["jetstream_note"]
        assert first["jetstream_note"] == ""
        row = next(r for r in first["tenants"] if r["calls"] > 3)
        assert (row["streams"], row["consumer_pending"]) == (2, 3)  # the kept stream's lag
        assert len(listings) == 1

        await _calls(stub, newcomer, 1)  # a new row, within the TTL
        second = await page.snapshot()
        assert len(second["tenants"]) == 2
        assert len(listings) == 1  # NATS was not asked again
    finally:
        channel.close()


async def test_rates_never_go_below_zero(make_gateway: GatewayFactory) -> None:
    """A tenant dropped from the table (NATSGW_TENANT_STATS_MAX) and seen again starts from 0
    calls: its row's rate against an older sample is 0, not negative."""
    first, second = tenant("first"), tenant("second")
    gw = await make_gateway(http_port=0, tenant_stats_max=1, metrics_tenants_top=1)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    page = _page(gw)
    try:
        await _calls(stub, first, 5)
        await page.snapshot()  # the base sample: first at 5 calls
        await _calls(stub, second, 1)  # first leaves the table
        await _calls(stub, first, 1)  # and comes back at 1 call
        await asyncio.sleep(0.6)  # a base sample counts once it is half a second old
        status = await page.snapshot()
    finally:
        channel.close()
    (row,) = status["tenants"]
    assert row["calls"] == 1
    assert row["calls_per_second"] >= 0
    assert status["other"]["calls_per_second"] >= 0


async def test_polling_the_page_hard_costs_one_snapshot_a_second(
    make_gateway: GatewayFactory,
) -> None:
    """The side port has no authentication: 50 requests, in a row or at once, make one snapshot
    (each one walks the tenant table, a few ms of the gRPC event loop with 10 000 tenants)."""
    gw = await make_gateway(http_port=0)
    meter = _page(gw).metrics.tenants
    walks = 0
    real_shown = meter.shown

    def counted() -> Any:
        nonlocal walks
        walks += 1
        return real_shown()

    meter.shown = counted  # type: ignore[method-assign]
    url = f"http://127.0.0.1:{gw.http_port}/status.json"
    started = asyncio.get_running_loop().time()
    async with aiohttp.ClientSession() as session:

        async def ask() -> None:
            async with session.get(url) as answer:
                assert answer.status == 200 and (await answer.json())["gateway"]
                assert answer.headers["Cache-Control"] == "no-store"

        await asyncio.gather(*(ask() for _ in range(25)))  # all at once, the first read
        for _ in range(25):  # then one after the other
            await ask()
    elapsed = asyncio.get_running_loop().time() - started
    assert walks <= 1 + int(elapsed), (walks, elapsed)


async def test_a_wide_top_n_reads_jetstream_for_a_bounded_number_of_tenants(
    make_gateway: GatewayFactory,
) -> None:
    """NATSGW_METRICS_TENANTS_TOP=1000 shows many rows; one read lists the streams of at most
    50 of them (each a NATS request) and says that the rest were left out."""
    gw = await make_gateway(http_port=0, metrics_tenants_top=1000)
    page = _page(gw)
    js = page.jetstream
    assert js is not None
    listings = 0
    real_list_streams = js.list_streams

    async def counted(subject_filter: str = "") -> list[StreamDetails]:
        nonlocal listings
        listings += 1
        return await real_list_streams(subject_filter)

    js.list_streams = counted  # type: ignore[method-assign]
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        await asyncio.gather(*(_calls(stub, tenant(f"wide{i}"), 1) for i in range(60)))
    finally:
        channel.close()
    status = await page.snapshot()
    assert len(status["tenants"]) == 60
    assert listings == 50
    assert "some tenants left out" in status["jetstream_note"]
    assert sum("streams" in row for row in status["tenants"]) == 50
